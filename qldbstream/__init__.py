"""qldbstream: consume, verify and replay Amazon QLDB journal streams from Amazon Kinesis."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qldbstream")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
