"""The installed version, read from package metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("midvary")
except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
    VERSION = "0+unknown"

USER_AGENT = f"midvary/{VERSION}"
