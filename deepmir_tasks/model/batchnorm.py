"""BatchNorm statistics for inference, recomputed on whole-brain-like crops of the training subjects.

During training a BatchNorm layer keeps an exponential moving average (momentum 0.1) of the batch
statistics, so the statistics a model is exported with are those of its last few dozen batches: four
small patches each, most of them centred on lesions, mimics or bright nuclei, some with modalities
dropped. A fine-tune from a checkpoint showed how little that is worth: 3,000 resumed steps left
weights as good as the checkpoint's but statistics that made its network call iron on 333 normal
structures in 3 development subjects; the same weights with statistics recomputed here called 2
(README, "The bundled model").

:func:`recompute_batchnorm` replaces the running statistics by their exact average over a fixed set of
crops like those the predictor sees: centred on random brain voxels of the training subjects, every
modality present, no augmentation. The crops are drawn from their own seeded stream, so the same
weights and subjects always give the same statistics.
"""

from __future__ import annotations

import numpy as np

__all__ = ["recompute_batchnorm", "brain_crops", "DEFAULT_CROPS", "DEFAULT_CROP_SIZE", "describe"]

#: number of brain-centred crops the statistics are averaged over, and their edge in voxels
DEFAULT_CROPS = 128
DEFAULT_CROP_SIZE = 64


def brain_crops(subjects, n: int, size: int, multiple: int = 1, seed: int = 0):
    """Yield ``n`` crops ``(C, s, s, s)`` float32 of the subjects' normalised images, each centred on a
    random one of a subject's ``brain_voxels`` (as the patch sampler draws them; subject drawn
    uniformly) and shifted to lie inside the volume; ``s`` is ``size`` or, for a smaller volume, the
    largest multiple of ``multiple`` that fits."""
    rng = np.random.default_rng(seed)
    for _ in range(int(n)):
        s = subjects[int(rng.integers(len(subjects)))]
        shape = np.array(s.image.shape[1:])
        edge = np.minimum(size, np.maximum(shape // multiple * multiple, multiple))
        centre = s.brain_voxels[int(rng.integers(len(s.brain_voxels)))].astype(int)
        lo = np.clip(centre - edge // 2, 0, np.maximum(shape - edge, 0))
        crop = np.zeros((s.image.shape[0],) + tuple(int(e) for e in edge), np.float32)
        src = np.asarray(s.image[(slice(None),) + tuple(slice(a, a + e) for a, e in zip(lo, edge))], np.float32)
        crop[(slice(None),) + tuple(slice(0, d) for d in src.shape[1:])] = src
        yield crop


def _batchnorm_layers(net):
    import torch

    return [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def recompute_batchnorm(net, subjects, *, crops: int = DEFAULT_CROPS, size: int = DEFAULT_CROP_SIZE,
                        batch: int = 2, seed: int = 0, device=None):
    """Set every BatchNorm layer's running mean and variance of ``net`` to their cumulative average over
    :func:`brain_crops` of ``subjects`` (:class:`~deepmir_tasks.model.data.TrainSubject`); weights are
    untouched. Returns ``net`` in evaluation mode with its layers' momentum as it was. A network without
    BatchNorm is returned as it is."""
    import torch

    layers = _batchnorm_layers(net)
    if not layers or not subjects:
        return net.eval()
    device = device if device is not None else next(net.parameters()).device
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over all batches
    net.train()
    multiple = int(getattr(net, "required_multiple", 1))
    stream = brain_crops(subjects, crops, size, multiple, seed)
    try:
        with torch.no_grad():
            while True:
                chunk = [c for _, c in zip(range(batch), stream)]
                if not chunk:
                    break
                shapes = {c.shape for c in chunk}
                for group in ([np.stack(chunk)] if len(shapes) == 1 else [c[None] for c in chunk]):
                    net(torch.from_numpy(group).to(device))
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        net.eval()
    return net


def describe(crops: int = DEFAULT_CROPS, size: int = DEFAULT_CROP_SIZE, seed: int = 0) -> dict:
    """The record's account of how the statistics were made (``training.batchnorm``)."""
    return {"statistics": "cumulative average over brain-centred crops of the training subjects "
                          "(every modality, no augmentation): deepmir_tasks.model.batchnorm",
            "crops": int(crops), "crop_size": int(size), "seed": int(seed)}
