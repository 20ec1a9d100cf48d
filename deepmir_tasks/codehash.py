"""The code a task runs is part of its cache key.

Pydra 1.0a12 hashes a task's ``function`` from its own source text, or, when the source cannot be
read (a function that cloudpickle sent by value into a worker process), from its bytecode. Two
things follow, both wrong for us:

- a change to a helper the function calls (lesion rules, resampling, normalisation...) leaves the
  hash unchanged, so the cache serves results computed by older code;
- the hash in a worker can differ from the parent's (cloudpickle 3.1.3 gives by-value functions
  the file name ``<dynamic-code>``), and pydra refuses the job ("Input field hashes have changed").

So a function of DEEPMIR's own packages is hashed here by its module and qualified name and by
:func:`module_fingerprint` of its module: the bytes of every first-party module it imports,
directly or through others (found by reading their import statements, wherever they stand, so the
lazy imports inside task bodies count), and the versions of the installed third-party packages
DEEPMIR depends on. Read from the files on disk, this is the same in every process, whatever
cloudpickle does to the function object, and it changes exactly when code the task can run
changes: editing a lesion rule reruns lesion extraction, not registration. Functions of other
packages keep pydra's own hashing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import types
from functools import lru_cache
from importlib import metadata
from pathlib import Path

__all__ = ["FIRST_PARTY", "code_version", "module_closure", "module_fingerprint", "register"]

#: Top-level packages whose code is fingerprinted.
FIRST_PARTY = ("deepmir_tasks", "workflows", "pipelines")

# (path, mtime_ns, size) -> (sha256 of the bytes, first-party modules it imports)
_FILE_CACHE: dict[tuple[str, int, int], tuple[str, frozenset[str]]] = {}


def _is_first_party(name: str) -> bool:
    return name.split(".", 1)[0] in FIRST_PARTY


@lru_cache(maxsize=None)
def _origin(module: str) -> tuple[str | None, bool]:
    """(source file, is a package) of a first-party module, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None, False
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None, False
    return spec.origin, spec.submodule_search_locations is not None


def _imports(path: str, module: str, is_package: bool) -> tuple[str, frozenset[str]]:
    """The file's digest and the first-party modules its import statements name."""
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key in _FILE_CACHE:
        return _FILE_CACHE[key]
    data = Path(path).read_bytes()
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(data, filename=path)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            # `from pkg import sub` may name a submodule: keep it if it is one
            names.update(f"{target}.{a.name}" for a in node.names if a.name != "*")
    found = set()
    for name in names:
        if not _is_first_party(name):
            continue
        parts = name.split(".")
        # a module imports every package above it too
        for i in range(1, len(parts) + 1):
            if _origin(".".join(parts[:i]))[0]:
                found.add(".".join(parts[:i]))
    result = (hashlib.sha256(data).hexdigest(), frozenset(found))
    _FILE_CACHE[key] = result
    return result


def module_closure(module: str) -> dict[str, str]:
    """Every first-party module that ``module`` can run, with the sha256 of its source file."""
    todo, seen = [module], {}
    parts = module.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path, is_package = _origin(name)
        if path is None:
            continue
        digest, deps = _imports(path, name, is_package)
        seen[name] = digest
        todo.extend(d for d in deps if d not in seen)
    return seen


@lru_cache(maxsize=1)
def _dependency_versions() -> tuple[tuple[str, str], ...]:
    """(name, installed version) of each package DEEPMIR requires (its extras excluded)."""
    try:
        requires = metadata.requires("deepmir") or []
    except metadata.PackageNotFoundError:
        return ()
    out = []
    for req in requires:
        if "extra ==" in req:
            continue
        name = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "absent"))
    return tuple(sorted(out))


@lru_cache(maxsize=None)
def module_fingerprint(module: str) -> str:
    """sha256 of the code ``module`` can run: its first-party closure and third-party versions.

    Computed once per process, as Python imports a module once: a file edited while a run is
    under way does not change what this process runs, nor its hashes. A worker process started
    after such an edit runs the new code and computes the new fingerprint, so pydra refuses the
    job rather than file its results under the old code's key."""
    h = hashlib.sha256()
    for name, digest in sorted(module_closure(module).items()):
        h.update(f"{name}={digest}\n".encode())
    for name, version in _dependency_versions():
        h.update(f"{name}=={version}\n".encode())
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version with a fingerprint of all of DEEPMIR's code, e.g. ``0.2.0+code.1a2b3c4d5e6f``."""
    from deepmir_tasks import __version__

    h = hashlib.sha256()
    for top in FIRST_PARTY:
        path, _ = _origin(top)
        if path is None:
            continue
        for f in sorted(Path(path).parent.rglob("*.py")):
            h.update(f.relative_to(Path(path).parent.parent).as_posix().encode() + b"\0")
            h.update(f.read_bytes())
    for name, version in _dependency_versions():
        h.update(f"{name}=={version}\n".encode())
    base = __version__.split("+", 1)[0]
    return f"{base}+code.{h.hexdigest()[:12]}"


_registered = False


def register() -> None:
    """Hash first-party functions by name and code fingerprint in pydra (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        from pydra.utils import hash as pydra_hash
    except ImportError:  # pydra is not installed: nothing to hash for
        return
    pydra_default = pydra_hash.bytes_repr_function

    def bytes_repr_function(obj, cache):
        module = getattr(obj, "__module__", None) or ""
        if not _is_first_party(module):
            yield from pydra_default(obj, cache)
            return
        yield f"deepmir-function:({module}.{obj.__qualname__}:".encode()
        yield module_fingerprint(module).encode()
        yield b")"

    pydra_hash.register_serializer(types.FunctionType)(bytes_repr_function)
    _registered = True
