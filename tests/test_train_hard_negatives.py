"""Bright-QSM background (normal deep nuclei) as hard negatives for the iron class."""

from __future__ import annotations

import numpy as np

from deepmir_tasks.model.train import PatchSampler, TrainSubject, bright_background


def _subject():
    shape = (40, 40, 30)
    zz = np.indices(shape)
    mask = np.ones(shape, bool)
    qsm = np.zeros(shape, np.float32)
    nucleus = ((zz[0] - 12) ** 2 + (zz[1] - 12) ** 2 + (zz[2] - 15) ** 2) <= 16   # 0.15 ppm, like a pallidum
    qsm[nucleus] = 0.15
    label = np.zeros(shape, np.uint8)
    cmb = ((zz[0] - 30) ** 2 + (zz[1] - 30) ** 2 + (zz[2] - 15) ** 2) <= 4
    qsm[cmb], label[cmb] = 0.9, 1
    image = np.stack([np.zeros(shape, np.float16)] * 2 + [qsm.astype(np.float16)])
    s = TrainSubject("sub-01", image, label, mask, np.eye(4), {1: [np.argwhere(cmb).astype(np.int16)]},
                     np.argwhere(mask).astype(np.int16))
    s.extra["bright"] = bright_background(qsm, label, mask)
    return s, nucleus, cmb


def test_bright_background_is_the_nucleus_and_never_a_lesion():
    s, nucleus, cmb = _subject()
    idx = s.extra["bright"]
    assert len(idx) == nucleus.sum()
    assert nucleus[tuple(idx.T)].all() and not cmb[tuple(idx.T)].any()
    capped = bright_background(s.image[2].astype(np.float32), s.label, s.mask, max_points=10)
    assert len(capped) == 10


def test_sampler_centres_bright_fraction_on_nuclei():
    s, nucleus, _ = _subject()
    centre = np.argwhere(nucleus).mean(axis=0)
    sampler = PatchSampler([s], patch=16, lesion_fraction=0.0, augment=False, bright_fraction=1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, c = sampler.centre(rng)
        assert np.abs(c - centre).max() <= 4 + 4   # nucleus radius + jitter
    off = PatchSampler([s], patch=16, lesion_fraction=0.0, augment=False, bright_fraction=0.0)
    far = [np.abs(off.centre(rng)[1] - centre).max() > 8 for _ in range(50)]
    assert sum(far) > 25   # without it, patches fall anywhere in the brain


def test_modality_dropout_zeroes_a_proper_subset_in_the_given_share():
    import torch

    from deepmir_tasks.model.train import drop_modalities

    x = torch.ones(400, 3, 2, 2, 2)
    out = drop_modalities(x, np.random.default_rng(0), 0.5)
    kept = (out.flatten(2).abs().sum(-1) > 0)             # (B, C): channel present
    n_kept = kept.sum(1)
    assert (n_kept >= 1).all()                             # never all three dropped
    dropped = (n_kept < 3).float().mean().item()
    assert 0.4 < dropped < 0.6
    assert {tuple(r) for r in kept[n_kept < 3].tolist()} == {
        (True, False, False), (False, True, False), (False, False, True),
        (True, True, False), (True, False, True), (False, True, True)}
    assert torch.equal(x, torch.ones_like(x))             # the input is not modified
    assert torch.equal(drop_modalities(x, np.random.default_rng(0), 0.0), x)
