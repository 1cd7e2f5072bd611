"""The tests' own gpushare cache: the prepared model and vLLM's caches are shared with the
user's (read, and slow to rebuild), but the registry of started process groups is private,
so tests never list or clean the user's leftovers, nor leave entries among them."""

import os

import pytest

from gpushare.models import cache_root
from helpers import MPS_STANDIN


@pytest.fixture(scope="session", autouse=True)
def private_process_registry(tmp_path_factory):
    shared = cache_root()
    private = tmp_path_factory.mktemp("gpushare-cache")
    for name in ("models", "vllm"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (private / name).symlink_to(shared / name)
    before = os.environ.get("GPUSHARE_CACHE")
    os.environ["GPUSHARE_CACHE"] = str(private)
    yield private
    if before is None:
        del os.environ["GPUSHARE_CACHE"]
    else:
        os.environ["GPUSHARE_CACHE"] = before


@pytest.fixture
def standin(monkeypatch, tmp_path):
    """The MPS control stand-in first on PATH; returns the log of the commands it was sent."""
    monkeypatch.setenv("PATH", f"{MPS_STANDIN}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "mps-standin.log"
    monkeypatch.setenv("MPS_STANDIN_LOG", str(log))
    return log
