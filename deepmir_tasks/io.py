"""Reading and writing images and tables safely.

Every reader here turns a user's mistake (missing file, corrupt gzip, 4-D image, NaNs, empty
image, zero voxel size) into one :class:`InputError` whose message names the file and the problem
in one line. Every writer writes to a temporary name in the same folder and renames it into place,
so a file only ever appears under its final name when it is complete.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "InputError",
    "read_header",
    "load_image",
    "load_volume",
    "load_mask",
    "atomic_path",
    "save_nifti",
    "write_json",
    "write_tsv",
    "as_path",
]


class InputError(ValueError):
    """A problem with a user's input file; ``str(err)`` is one line naming the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # pickles across worker processes (pydra's cf and slurm workers)
        return type(self), (self.path, self.problem)


def read_header(path, *, what: str = "image"):
    """Open a NIfTI file's header (the data are not read): the cheap checks a cohort run makes of
    every file before anything runs (exists, not a folder, not empty, readable gzip and header).
    Returns the ``nibabel`` image (data still on disk); raises :class:`InputError` naming the file."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} file does not exist")
    if path.is_dir():
        raise InputError(path, f"{what} path is a folder, not a NIfTI file")
    if path.stat().st_size == 0:
        raise InputError(path, f"{what} file is empty (0 bytes)")
    try:
        img = nib.load(str(path))
        img.header  # noqa: B018 - parsed here, so that a broken header is this file's error
    except (gzip.BadGzipFile, zlib.error, EOFError) as err:
        raise InputError(path, f"{what} file is not a readable gzip (truncated or corrupt: {err})") from None
    except nib.filebasedimages.ImageFileError as err:
        raise InputError(path, f"{what} file is not a readable NIfTI image ({_first_line(err)})") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"{what} file could not be read ({_first_line(err)})") from None
    return img


def load_image(path, *, what: str = "image", allow_empty: bool = False, squeeze_4d: bool = True):
    """Load a 3-D NIfTI image with nibabel and check it; return the ``nibabel`` image.

    ``what`` names the role of the file (``"T2w"``, ``"QSM"``...) in messages.
    A 4-D image with a single volume is accepted as 3-D when ``squeeze_4d`` is true.
    Data are read (and checked for finite values) once here; the returned image holds them.
    """
    import nibabel as nib

    path = Path(path)
    img = read_header(path, what=what)
    try:
        data = np.asanyarray(img.dataobj)
    except (gzip.BadGzipFile, zlib.error, EOFError) as err:
        raise InputError(path, f"{what} file is not a readable gzip (truncated or corrupt: {err})") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"{what} file could not be read ({_first_line(err)})") from None

    if np.iscomplexobj(data):
        raise InputError(path, f"{what} is complex-valued ({data.dtype}); give the magnitude image "
                               "(and, for QSM, the real susceptibility map)")
    if data.ndim == 4 and squeeze_4d and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"{what} must be a 3-D image, got {data.ndim}-D with shape {tuple(data.shape)}")
    if min(data.shape) < 2:
        raise InputError(path, f"{what} has a degenerate shape {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.number):
        raise InputError(path, f"{what} has a non-numeric data type {data.dtype}")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    raw = _raw_pixdim(path, img)
    if raw is not None and (not np.all(np.isfinite(raw)) or np.any(raw <= 0)):
        # nibabel quietly reads a zero pixdim as 1 mm; the header's geometry is then a guess
        raise InputError(path, f"{what} header has invalid voxel sizes (pixdim {[round(float(x), 4) for x in raw]}); "
                               "fix the header")
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(path, f"{what} has invalid voxel sizes {tuple(zooms.round(4))}")
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, f"{what} has a singular or non-finite affine")
    data = np.asarray(data, dtype=np.float32)
    n_bad = int(np.count_nonzero(~np.isfinite(data)))
    if n_bad:
        raise InputError(path, f"{what} contains {n_bad} non-finite voxels (NaN or Inf)")
    if not allow_empty and not np.any(data):
        raise InputError(path, f"{what} is empty (every voxel is zero)")
    out = nib.Nifti1Image(data, affine, img.header)
    out.set_data_dtype(np.float32)
    return out


def load_mask(path, shape, against: str, *, what: str = "brain mask"):
    """Load a mask as a boolean array, refusing one whose shape is not ``shape`` (the grid of
    ``against``, named in the message)."""
    img = load_image(path, what=what)
    if img.shape != tuple(shape):
        raise InputError(path, f"{what} shape {img.shape} does not match the {against} {tuple(shape)}")
    return np.asarray(img.dataobj) > 0


def load_volume(path, **kwargs):
    """Load and check a 3-D image; return ``(data float32 array, affine)``."""
    img = load_image(path, **kwargs)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


@contextlib.contextmanager
def atomic_path(final_path):
    """Yield a temporary path beside ``final_path``; rename it into place only on success."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final_path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.name.split('.')[0]}.", suffix=suffix,
                               dir=final_path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_nifti(data, affine, path, *, dtype=None, header=None):
    """Write ``data`` as NIfTI under ``path`` atomically; return the path."""
    import nibabel as nib

    data = np.asarray(data)
    if dtype is not None:
        data = data.astype(dtype)
    img = nib.Nifti1Image(data, affine, header)
    img.set_data_dtype(data.dtype)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def write_json(obj, path, **kwargs):
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default, **kwargs) + "\n")
    return Path(path)


def write_tsv(df, path, **kwargs):
    """Write a pandas DataFrame as TSV atomically (``n/a`` for missing values, as BIDS asks)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="n/a", **kwargs)
    return Path(path)


def as_path(value):
    """A filesystem path from a str, a Path or a fileformats object (``None`` stays ``None``)."""
    if value is None:
        return None
    return Path(str(getattr(value, "fspath", value)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _raw_pixdim(path, img):
    """The voxel sizes as stored in a NIfTI header (before nibabel's repairs), or None."""
    hdr = getattr(img, "header", None)
    if hdr is None or not hasattr(hdr, "from_fileobj"):
        return None
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as f:
            raw = type(hdr).from_fileobj(f, check=False)
        return np.asarray(raw["pixdim"][1:4], dtype=float)
    except Exception:  # noqa: BLE001 - the header was already read once; this is a second look only
        return None


def _first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
