"""prefscale: predict which of two chatbot answers a person prefers, at cluster scale."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prefscale")  # one place for the version: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
