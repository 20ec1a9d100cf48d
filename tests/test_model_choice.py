"""A model for one subset of the modalities (issue 13): fine-tuned from a model trained on more of
them, it starts from exactly what that model does on the subset; bundled, it is the model a subject
with exactly those modalities runs with."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from deepmir_tasks.io import InputError
from deepmir_tasks.model.choice import bundled_subset_models, choose_model
from deepmir_tasks.model.modelfile import DEFAULT_MODEL, load_model
from helpers.model import tiny_model


def _started(res, rec):
    """The network a run started from, as its checkpoint holds it (the exported file has the same
    weights with BatchNorm statistics recomputed on the training subjects)."""
    from deepmir_tasks.model.train import checkpoint_path
    from deepmir_tasks.model.unet import UNet

    net = UNet(**{k: v for k, v in rec["architecture"].items() if k != "name"})
    net.load_state_dict(torch.load(checkpoint_path(res["model"]), weights_only=True)["model"])
    return net.eval()


def test_fine_tuning_on_fewer_modalities_starts_from_what_the_model_does_on_them(tmp_path, monkeypatch):
    import workflows.train as tr
    from deepmir_tasks.model.train import TrainConfig
    from helpers.model import identity_prepare, write_synthetic_bids

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    bids, ann = write_synthetic_bids(tmp_path / "bids", [51, 52], shape=(24, 24, 16))
    init = tiny_model(tmp_path / "all.safetensors")
    config = TrainConfig(modalities=("t2", "swi"), levels=3, base=8, patch=16, batch=1, steps=2, folds=1,
                         validate_every=2, seed=1)
    res = tr.train(bids, ann, tmp_path / "t2swi.safetensors", config, init=init, stop_at=0, progress=False,
                   threads=1, device="cpu")
    big, _ = load_model(init)
    _, rec = load_model(res["model"])
    small = _started(res, rec)
    assert rec["modalities"] == ["t2", "swi"] and rec["architecture"]["in_channels"] == 2
    assert rec["normalization"].keys() == {"t2", "swi"}
    x = torch.randn(1, 3, 16, 16, 16)
    x[:, 2] = 0  # the QSM missing, as modality dropout shows it to the bigger model
    with torch.no_grad():
        np.testing.assert_allclose(small(x[:, :2]).numpy(), big(x).numpy(), atol=1e-5)
    # the other way round (more modalities than the model had) is refused in one line
    with pytest.raises(InputError, match="modalities \\['t2', 'swi'\\]"):
        tr.train(bids, ann, tmp_path / "back.safetensors", TrainConfig(levels=3, base=8, folds=1),
                 init=res["model"], stop_at=0, progress=False)


def test_a_single_class_model_fine_tuned_from_the_multi_class_one_keeps_its_class_filters(tmp_path, monkeypatch):
    """A single-class model (the paper's single-class rows) starts from the multi-class model's
    background and class logits: its softmax is the multi-class one renormalised without the
    other class; a class the first model lacks is refused."""
    import workflows.train as tr
    from deepmir_tasks.model.train import TrainConfig
    from helpers.model import identity_prepare, write_synthetic_bids

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    bids, ann = write_synthetic_bids(tmp_path / "bids", [53, 54], shape=(24, 24, 16))
    init = tiny_model(tmp_path / "multi.safetensors")
    big, _ = load_model(init)
    x = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        full = big(x)
    for cls, row in (("cmb", 1), ("iron", 2)):
        config = TrainConfig(classes=(cls,), levels=3, base=8, patch=16, batch=1, steps=2, folds=1,
                             validate_every=2, seed=1)
        res = tr.train(bids, ann, tmp_path / f"{cls}.safetensors", config, init=init, stop_at=0, progress=False,
                       threads=1, device="cpu")
        _, rec = load_model(res["model"])
        small = _started(res, rec)
        assert rec["classes"] == ["background", cls] and rec["architecture"]["n_classes"] == 2
        with torch.no_grad():
            np.testing.assert_allclose(small(x).numpy(), full[:, [0, row]].numpy(), atol=1e-5)
    with pytest.raises(InputError, match="classes \\['background', 'cmb'\\]"):
        tr.train(bids, ann, tmp_path / "both.safetensors", TrainConfig(levels=3, base=8, folds=1),
                 init=tmp_path / "cmb.safetensors", stop_at=0, progress=False)


def test_a_subject_runs_with_the_bundled_model_for_exactly_its_modalities(tmp_path):
    t2swi = tiny_model(tmp_path / "deepmir_t2swi.safetensors", modalities=("t2", "swi"))
    (tmp_path / "notes.json").write_text("{}")  # not a model record: ignored
    assert bundled_subset_models(tmp_path) == {frozenset({"t2", "swi"}): t2swi}
    bundled = bundled_subset_models(tmp_path)
    assert choose_model({"swi", "t2"}, bundled=bundled) == t2swi
    for other in ({"t2", "swi", "qsm"}, {"swi", "qsm"}, {"t2"}):
        assert choose_model(other, bundled=bundled) == DEFAULT_MODEL
    given = tmp_path / "mine.safetensors"
    assert choose_model({"t2", "swi"}, given, bundled=bundled) == given  # the user's model wins


def test_the_modality_table_adds_rows_for_single_class_models_only(tmp_path):
    """bench_modalities takes the any-subset single-class models of a folder (CMB first) and leaves
    blank the class a model does not learn; a two-class or a one-subset model is not one of them."""
    import json

    from benchmarks.bench_modalities import row, single_class_models
    from deepmir_tasks.model.modelfile import record_path

    def variant(name, classes, dropout):
        path = tiny_model(tmp_path / f"{name}.safetensors")
        rec = json.loads(record_path(path).read_text())
        rec["classes"] = ["background", *classes]
        rec.setdefault("training", {})["config"] = {"modality_dropout": dropout}
        record_path(path).write_text(json.dumps(rec))
        return path

    iron, cmb = variant("a_iron", ["iron"], 0.3), variant("b_cmb", ["cmb"], 0.3)
    variant("c_both", ["cmb", "iron"], 0.3)
    variant("d_cmb_no_dropout", ["cmb"], 0.0)
    assert single_class_models(tmp_path) == [cmb, iron]
    fig = {"n_subjects": 2, "cmb": {"sensitivity": 0.5, "precision": 1.0, "fp": 0, "tp": 1, "n_true": 2,
                                    "on_calcification": 1},
           "iron": {"sensitivity": 0.0, "precision": float("nan"), "fp": 0, "tp": 0, "n_true": 3}}
    r = row(("swi", "qsm"), fig, "deepmir_cmb_only", ["cmb"])
    assert r["classes"] == "CMB only" and r["cmb_sens"] == 0.5 and r["calc_called_cmb"] == 1
    assert np.isnan(r["iron_sens"]) and np.isnan(r["iron_prec"]) and set(r["_counts"]) == {"cmb"}
    assert row(("swi",), fig, "deepmir_default", ["cmb", "iron"])["classes"] == "CMB + iron"
