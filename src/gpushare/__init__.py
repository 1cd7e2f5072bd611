"""gpushare: measure how LLM serving behaves when one NVIDIA GPU is shared."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpushare")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
