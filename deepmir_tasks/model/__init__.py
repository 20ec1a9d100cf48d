"""The DEEPMIR network, its model files, inference and training.

Classes are ``("background", "cmb", "iron")`` for the multi-class model; modality names are
``"t2"``, ``"swi"`` and ``"qsm"``. Heavy modules (torch) are imported on first use.
"""

from __future__ import annotations

__all__ = ["CLASSES", "MODALITIES", "Predictor", "segment_subject", "UNet", "load_model", "save_model"]

CLASSES = ("background", "cmb", "iron")
MODALITIES = ("t2", "swi", "qsm")


def __getattr__(name):
    if name in ("Predictor", "segment_subject"):
        from deepmir_tasks.model import predictor
        return getattr(predictor, name)
    if name == "UNet":
        from deepmir_tasks.model.unet import UNet
        return UNet
    if name in ("load_model", "save_model"):
        from deepmir_tasks.model import modelfile
        return getattr(modelfile, name)
    raise AttributeError(f"module 'deepmir_tasks.model' has no attribute {name!r}")
