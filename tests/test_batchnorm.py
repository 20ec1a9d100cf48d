"""BatchNorm statistics recomputed for inference (deepmir_tasks.model.batchnorm), at export and for a model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepmir_tasks.model.batchnorm import brain_crops, recompute_batchnorm
from deepmir_tasks.model.modelfile import load_model, record_path
from deepmir_tasks.model.unet import UNet
from helpers.model import train_subject


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(seed=0):
    torch.manual_seed(seed)
    net = UNet(in_channels=3, n_classes=3, levels=2, base=4, dim=3, norm="batch", max_width=16)
    net.train()
    with torch.no_grad():  # moving averages of a few batches unlike the subjects' images
        for _ in range(3):
            net(torch.randn(2, 3, 16, 16, 16) * 4 + 3)
    return net.eval()


def test_recomputed_statistics_are_the_exact_average_over_the_crops_and_weights_stay():
    subjects = [train_subject(11, shape=(28, 26, 20)), train_subject(12, shape=(28, 26, 20))]
    net = _net()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    momentum = first.momentum

    # what the first BatchNorm layer sees, batch by batch, on the same crops
    crops = list(brain_crops(subjects, 6, 16, net.required_multiple, seed=3))
    seen = []
    hook = first.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        net.train()
        for i in range(0, 6, 2):
            net(torch.from_numpy(np.stack(crops[i:i + 2])))
    hook.remove()
    want_mean = torch.stack([x.mean(dim=(0, 2, 3, 4)) for x in seen]).mean(0)
    want_var = torch.stack([x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1, unbiased=True) for x in seen]).mean(0)

    recompute_batchnorm(net, subjects, crops=6, size=16, batch=2, seed=3)
    assert not net.training and first.momentum == momentum
    assert torch.allclose(first.running_mean, want_mean, atol=1e-5)
    assert torch.allclose(first.running_var, want_var, rtol=1e-4, atol=1e-6)
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k
    # seeded: the same weights and subjects give the same statistics
    again = recompute_batchnorm(_net(), subjects, crops=6, size=16, batch=2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))


def test_crops_lie_in_the_volume_are_centred_on_brain_and_shrink_to_fit():
    s = train_subject(13, shape=(24, 40, 20))
    crops = list(brain_crops([s], 5, 32, multiple=4, seed=0))
    assert all(c.shape == (3, 24, 32, 20) for c in crops)
    assert all(np.isfinite(c).all() and np.abs(c).sum() > 0 for c in crops)


def test_training_exports_recomputed_statistics_and_keeps_its_own_in_the_checkpoint(tmp_path, monkeypatch):
    import workflows.train as tr
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.train import TrainConfig, checkpoint_path
    from helpers.model import identity_prepare, write_synthetic_bids
    from pipelines.bundled_model import recompute_model_batchnorm

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    bids, ann = write_synthetic_bids(tmp_path / "bids", [31, 32])
    config = TrainConfig(levels=3, base=8, max_width=32, patch=16, batch=2, steps=4, folds=1, fold=0,
                         validate_every=4, seed=5, checkpoint_seconds=1e9)
    out = tr.train(bids, ann, tmp_path / "m.safetensors", config, progress=False, threads=1, device="cpu")
    exported, rec = load_model(out["model"])
    assert rec["training"]["batchnorm"]["crops"] > 0

    # the exported file = the checkpoint's weights with statistics recomputed on the training subjects
    ckpt = torch.load(checkpoint_path(out["model"]), weights_only=True)["model"]
    net = UNet(**{k: v for k, v in rec["architecture"].items() if k != "name"})
    net.load_state_dict(ckpt)
    subs = tr.load_subjects(bids, ann, tmp_path / "cache", config, DEFAULT_NORMALIZATION, progress=False)
    recompute_batchnorm(net, subs, seed=config.seed)
    got = exported.state_dict()
    for k, v in net.state_dict().items():
        assert torch.allclose(got[k].float(), v.float(), atol=1e-5), k
    moving = [k for k in ckpt if k.endswith("running_var")]
    assert any(not torch.allclose(ckpt[k], got[k], rtol=1e-3) for k in moving)  # the checkpoint keeps its own

    # a model file exported before training did this gets the same statistics from the stage
    bad = dict(ckpt)
    for k in moving:
        bad[k] = bad[k] * 50
    exported.load_state_dict(bad)
    from deepmir_tasks.model.modelfile import save_model

    save_model(exported, tmp_path / "old.safetensors", {k: v for k, v in rec.items() if k != "training"})
    entry = recompute_model_batchnorm(tmp_path / "old.safetensors", bids, tmp_path / "cache",
                                      config, {"n": 2}, progress=False)
    fixed, fixed_rec = load_model(tmp_path / "old.safetensors")
    assert fixed_rec["training"]["batchnorm"] == json.loads(json.dumps(entry))
    assert json.loads(record_path(tmp_path / "old.safetensors").read_text())["weights_sha256"] == fixed_rec["weights_sha256"]
    for k, v in net.state_dict().items():
        assert torch.allclose(fixed.state_dict()[k].float(), v.float(), atol=1e-5), k


def test_without_a_validation_fold_the_model_is_exported_once_where_the_run_ends(tmp_path, monkeypatch):
    """Recomputing the statistics costs minutes on a full cohort: a run without a validation fold
    exports at its last step only (or where it stops early), not at every validation step."""
    import deepmir_tasks.model.batchnorm as bn
    import workflows.train as tr
    from deepmir_tasks.model.train import TrainConfig
    from helpers.model import identity_prepare, write_synthetic_bids

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    calls = []
    real = bn.recompute_batchnorm
    monkeypatch.setattr(bn, "recompute_batchnorm", lambda net, *a, **k: calls.append(1) or real(net, *a, **k))
    bids, ann = write_synthetic_bids(tmp_path / "bids", [33, 34])
    config = TrainConfig(levels=3, base=8, max_width=32, patch=16, batch=2, steps=6, folds=1, fold=0,
                         validate_every=2, seed=5, checkpoint_seconds=1e9)
    out = tr.train(bids, ann, tmp_path / "m.safetensors", config, progress=False, threads=1, device="cpu")
    rec = load_model(out["model"])[1]
    assert len(calls) == 1 and rec["training"]["steps_done"] == 6
    assert [h["step"] for h in out["history"]] == [2, 4, 6]  # the loss is still recorded at each of them

    # stopped early: exported once, at the step where it stopped; resumed to the end: once more
    calls.clear()
    stopped = tr.train(bids, ann, tmp_path / "s.safetensors", config, progress=False, threads=1, device="cpu", stop_at=3)
    assert len(calls) == 1 and load_model(stopped["model"])[1]["training"]["steps_done"] == 3
    tr.train(bids, ann, tmp_path / "s.safetensors", config, progress=False, threads=1, device="cpu", resume=True)
    assert len(calls) == 2 and load_model(stopped["model"])[1]["training"]["steps_done"] == 6
