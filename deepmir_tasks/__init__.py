"""DEEPMIR: detection of cerebral microbleeds and iron deposits in T2w, SWI and QSM."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("deepmir")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
