"""DEEPMIR: detection of cerebral microbleeds and iron deposits in T2w, SWI and QSM."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("deepmir")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# Pydra hashes DEEPMIR's task functions by the code they can run (see codehash): registered on
# import, so that it holds in every worker process that unpickles one of our tasks.
from deepmir_tasks import codehash as _codehash  # noqa: E402

_codehash.register()
