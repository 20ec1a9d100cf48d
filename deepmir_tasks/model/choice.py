"""Which model a subject runs with.

A user's ``--model`` runs every subject. Otherwise a subject runs with the bundled model made for
exactly the modalities it has, when the package ships one (e.g. ``deepmir_t2swi`` for T2w + SWI,
the common clinical protocol), and with the bundled default (any non-empty subset of T2w, SWI and
QSM) when it does not. Bundled models are the ``*.safetensors`` beside the default with a model
record; their records say which modalities they take.
"""

from __future__ import annotations

import json
from pathlib import Path

from deepmir_tasks.model.modelfile import DEFAULT_MODEL, FORMAT, record_path

__all__ = ["bundled_subset_models", "choose_model"]


def bundled_subset_models(folder=None) -> dict[frozenset, Path]:
    """The bundled models other than the default, by the set of modalities each takes."""
    folder = Path(folder) if folder is not None else DEFAULT_MODEL.parent
    out = {}
    for weights in sorted(folder.glob("*.safetensors")):
        if weights.resolve() == DEFAULT_MODEL.resolve():
            continue
        try:
            rec = json.loads(record_path(weights).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("format") == FORMAT and rec.get("modalities"):
            out.setdefault(frozenset(rec["modalities"]), weights)
    return out


def choose_model(modalities, model=None, bundled=None) -> Path:
    """``model`` when given; else the bundled model for exactly ``modalities``, else the default.
    ``bundled``: :func:`bundled_subset_models`, read once when choosing for many subjects."""
    if model is not None:
        return Path(model)
    bundled = bundled_subset_models() if bundled is None else bundled
    return bundled.get(frozenset(modalities), DEFAULT_MODEL)
