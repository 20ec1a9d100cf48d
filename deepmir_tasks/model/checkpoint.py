"""Training checkpoints: save, load, where they live."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from deepmir_tasks.io import InputError, atomic_path
from deepmir_tasks.model.config import TrainConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path, net, optimizer, step: int, rng, config: TrainConfig, state: dict) -> Path:
    """Weights, optimiser, step and RNG states in one file readable with ``weights_only=True``."""
    import torch

    ckpt = {
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "config": json.dumps(config.to_json()),
        "state": json.dumps(state),
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_checkpoint(path) -> dict:
    import pickle

    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise InputError(path, f"checkpoint could not be read ({str(err).splitlines()[0][:200]})") from None
    for key in ("model", "optimizer", "step", "numpy_rng", "config"):
        if key not in ckpt:
            raise InputError(path, f"not a DEEPMIR training checkpoint (no {key!r})")
    return ckpt


def checkpoint_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.pt")
