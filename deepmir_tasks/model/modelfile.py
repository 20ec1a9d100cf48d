"""Model files: weights in safetensors and a JSON record beside them.

``MODEL.safetensors`` holds the network's tensors (no pickle anywhere); ``MODEL.json`` holds what
is needed to use them correctly and to know where they came from::

    {
      "format": "deepmir-model", "format_version": 1,
      "architecture": {"name": "UNet", "in_channels": 3, "n_classes": 3, "levels": 5, "base": 16,
                       "dim": 3, "norm": "batch", "max_width": 128},
      "modalities": ["t2", "swi", "qsm"],          # input channels, in order
      "normalization": {"t2": {...}, ...},          # see deepmir_tasks.model.normalize
      "classes": ["background", "cmb", "iron"],
      "inference": {"lesions": {...}},              # calibrated lesion rules (LesionRules)
      "training": {...},                            # data, seeds, steps, command
      "validation": {...},                          # measured lesion-wise figures
      "package_version": "...",
      "weights_file": "MODEL.safetensors", "weights_sha256": "..."
    }

Loading checks the record against the weights: a missing record, a SHA-256 mismatch, a file that
safetensors cannot parse, or tensors that do not fit the architecture each raise a one-line
:class:`~deepmir_tasks.io.InputError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deepmir_tasks.bids_names import MODALITIES
from deepmir_tasks.io import InputError, atomic_path, write_json
from deepmir_tasks.lesions.rules import LesionRules

__all__ = [
    "DEFAULT_MODEL",
    "MODALITIES",
    "record_path",
    "sha256_file",
    "save_model",
    "load_record",
    "load_model",
    "build_network",
]

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "deepmir_default.safetensors"
FORMAT = "deepmir-model"
FORMAT_VERSION = 1


def record_path(weights_path) -> Path:
    """The JSON record that belongs to a weights file (same name, ``.json``)."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.name.removesuffix(".safetensors") + ".json")


#: the lesion rules a record may calibrate, with their defaults (:class:`LesionRules` holds them)
LESION_RULE_DEFAULTS = LesionRules().record_values()


def _read_record(path=None) -> dict | None:
    """A model's record as a dict (``path``: the weights or the record; ``None``: the bundled
    model), or ``None`` when it cannot be read (loading the model reports that)."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    record = path if path.suffix == ".json" else record_path(path)
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def model_lesion_rules(path=None) -> LesionRules:
    """The lesion rules a model's record calibrated (``inference.lesions``), the defaults for the
    rest. ``path`` is the weights file or its record (``None``: the bundled model); a record that
    cannot be read gives the defaults (loading the model reports that)."""
    try:
        return LesionRules.from_record(_read_record(path))
    except (ValueError, TypeError, AttributeError):
        return LesionRules()


def calibrated_with_tta(record) -> bool:
    """Whether a model's lesion rules were calibrated on flip test-time-augmented probabilities
    (``inference.tta`` of its record, a dict or the path of the weights or record): the model then
    always predicts with it, since its minimum probabilities mean something else without."""
    if not isinstance(record, dict):
        record = _read_record(record)
    inference = (record or {}).get("inference")
    return bool(isinstance(inference, dict) and inference.get("tta"))


def lesion_rules(path=None) -> dict:
    """:func:`model_lesion_rules` as a dict of the rules a record calibrates."""
    return model_lesion_rules(path).record_values()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_network(architecture: dict):
    """Build the (untrained) network an ``architecture`` record entry describes."""
    from deepmir_tasks.model.unet import UNet

    arch = dict(architecture)
    name = arch.pop("name", "UNet")
    if name != "UNet":
        raise ValueError(f"unknown architecture {name!r}")
    arch.pop("slices", None)  # 2.5-D: number of slices is folded into in_channels
    return UNet(**arch)


def save_model(net, path, record: dict) -> tuple[Path, Path]:
    """Write ``net``'s weights to ``path`` (safetensors) and ``record`` beside it (JSON).

    ``record`` must hold ``architecture``, ``modalities``, ``normalization`` and ``classes``; the
    weights file name, its SHA-256 and the format fields are filled in here.
    """
    from safetensors.torch import save_file

    from deepmir_tasks import __version__

    path = Path(path)
    if not path.name.endswith(".safetensors"):
        raise ValueError(f"model file must end in .safetensors: {path}")
    for key in ("architecture", "modalities", "normalization", "classes"):
        if key not in record:
            raise ValueError(f"model record lacks {key!r}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    rec = {"format": FORMAT, "format_version": FORMAT_VERSION}
    rec.update(record)
    rec.setdefault("package_version", __version__)
    rec["weights_file"] = path.name
    rec["weights_sha256"] = sha256_file(path)
    write_json(rec, record_path(path))
    return path, record_path(path)


def load_record(path) -> dict:
    """Read and check the JSON record of a weights file (and the weights' SHA-256)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "model weights file does not exist")
    rpath = record_path(path)
    if not rpath.exists():
        raise InputError(rpath, f"model record is missing (every model needs a JSON record beside {path.name})")
    try:
        rec = json.loads(rpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(rpath, f"model record is not valid JSON ({err})") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise InputError(rpath, f"not a DEEPMIR model record (format is not {FORMAT!r})")
    if rec.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(rpath, f"model record format {rec.get('format_version')} is newer than this "
                                f"DEEPMIR supports ({FORMAT_VERSION}); upgrade deepmir")
    for key in ("architecture", "modalities", "normalization", "classes", "weights_sha256"):
        if key not in rec:
            raise InputError(rpath, f"model record lacks {key!r}")
    stale = [k for k in ("thresholds", "component_min_prob") if (rec.get("inference") or {}).get(k)]
    if stale:
        raise InputError(rpath, f"model record sets inference.{stale[0]}, which is no longer read: the lesion "
                                "rules are inference.lesions (threshold, min_prob_cmb, min_prob_iron)")
    bad = [m for m in rec["modalities"] if m not in MODALITIES]
    if bad:
        raise InputError(rpath, f"model record names unknown modalities {bad} (known: {list(MODALITIES)})")
    sha = sha256_file(path)
    if sha != rec["weights_sha256"]:
        raise InputError(path, f"weights file SHA-256 {sha[:12]}… does not match its record "
                               f"({rec['weights_sha256'][:12]}…): the file is corrupt or was changed")
    return rec


def load_model(path=None, *, device="cpu"):
    """Load a model file; return ``(network in eval mode, record)``. ``None`` = bundled default."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_MODEL
    rec = load_record(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(path, f"weights file is not a readable safetensors file ({err})") from None
    try:
        net = build_network(rec["architecture"])
    except (TypeError, ValueError) as err:
        raise InputError(record_path(path), f"model record has an invalid architecture ({err})") from None
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise InputError(path, "weights do not fit the architecture in the record "
                               f"({first[0] if first else err})") from None
    net.to(device).eval()
    return net, rec
