"""The environment a server starts with, stated: what it needs from gpushare's own, by name,
plus what its plan sets (the engine's variables, the config's `env`, and the GPU choice the
sharing mode makes), never the whole environment gpushare was started with.

What is passed on: the process basics (PATH, HOME, the user, locale, time zone, temporary
folder), the dynamic loader's paths and preloads (a CPU vLLM preloads its allocator), and
every variable of the families that configure what a server runs on: Python, Hugging Face,
vLLM, PyTorch and Triton, CUDA and NCCL, and the OpenMP / MKL thread settings. The GPU a
server sees is its plan's alone (sharing.gpu, a MIG instance, or its MPS daemon's), never
one inherited from whoever started gpushare (a Ray worker is given one, for instance).
"""

from __future__ import annotations

import os
from typing import Mapping

from .engines import LaunchPlan

PASSED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "LD_LIBRARY_PATH", "LD_PRELOAD", "VIRTUAL_ENV", "XDG_CACHE_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR",
})
PASSED_PREFIXES = ("LC_", "PYTHON", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "VLLM_", "TORCH",
                   "TRITON_", "CUDA_", "NCCL_", "NVIDIA_", "OMP_", "KMP_", "MKL_")
WITHHELD = frozenset({"CUDA_VISIBLE_DEVICES"})
"""Set by the plan where the sharing mode chooses a GPU; never inherited."""


def passed_on(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` a server is given: the names and families above, less WITHHELD."""
    return {k: v for k, v in environ.items()
            if k not in WITHHELD and (k in PASSED or k.startswith(PASSED_PREFIXES))}


def server_environment(plan: LaunchPlan, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What the server is started with: gpushare's environment as `passed_on` filters it, and the plan's on top."""
    return {**passed_on(environ), **plan.env}
