"""Model tests on simulated subjects (deepmir_tasks.simulate): overfitting one subject, training
through the real preprocessing, and the bundled default model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.model import simulated_on_t2_grid


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_subject_from_sim(sim):
    import cc3d

    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION, normalize_stack
    from deepmir_tasks.model.train import TrainSubject

    vols, mask, dseg, aff = simulated_on_t2_grid(sim)
    img = normalize_stack(vols, mask, ["t2", "swi", "qsm"], DEFAULT_NORMALIZATION).astype(np.float16)
    lesions = {}
    for c in (1, 2):
        cc = cc3d.connected_components((dseg == c).astype(np.uint8), connectivity=26)
        lesions[c] = [np.argwhere(cc == i).astype(np.int16) for i in range(1, int(cc.max()) + 1)]
    s = TrainSubject("sub-sim", img, dseg.copy(), mask, aff, lesions, np.argwhere(mask).astype(np.int16), dseg)
    s.extra["volumes"] = vols
    return s


@pytest.mark.slow
def test_model_overfits_one_small_simulated_subject_and_finds_its_lesions():
    from deepmir_tasks.model.normalize import DEFAULT_NORMALIZATION
    from deepmir_tasks.model.predictor import Predictor
    from deepmir_tasks.model.train import PatchSampler, dice_ce_loss, evaluate_predictor
    from deepmir_tasks.model.unet import UNet
    from deepmir_tasks.simulate import simulate_subject

    sim = simulate_subject(7, size="small", lesion_counts={"cmb": (6, 8), "iron": (2, 3)})
    subj = _train_subject_from_sim(sim)
    n_true = {c: len(subj.lesions[c]) for c in (1, 2)}
    assert n_true[1] >= 3 and n_true[2] >= 1
    torch.manual_seed(0)
    net = UNet(3, 3, levels=3, base=16, max_width=64)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sampler = PatchSampler([subj], patch=16, lesion_fraction=0.8, augment=False)
    rng = np.random.default_rng(0)
    net.train()
    for _ in range(300):
        x, y = sampler.sample(rng, 4)
        loss = dice_ce_loss(net(x), y, [1, 3, 3])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    rec = {"architecture": {"dim": 3}, "modalities": ["t2", "swi", "qsm"],
           "normalization": DEFAULT_NORMALIZATION, "classes": ["background", "cmb", "iron"]}
    res = evaluate_predictor(Predictor(net, rec), [subj])
    assert res["cmb"]["sensitivity"] >= 0.8, res
    assert res["cmb"]["precision"] >= 0.6, res
    assert res["iron"]["sensitivity"] >= 0.5, res


@pytest.mark.slow
def test_deepmir_train_on_a_small_simulated_cohort_uses_the_pipeline_preprocessing(small_cohort, tmp_path):
    from deepmir_tasks.model.modelfile import record_path
    from deepmir_tasks.model.predictor import Predictor
    from deepmir_tasks.model.train import checkpoint_path
    from pipelines.cli import main

    out = tmp_path / "m.safetensors"
    cache = tmp_path / "cache"
    args = ["train", str(small_cohort), "--annotations", str(small_cohort / "derivatives" / "annotations"),
            "--out", str(out), "--levels", "3", "--base", "4", "--patch", "16", "--folds", "2",
            "--fold", "1", "--steps", "2", "--validate-every", "2", "--threads", "1", "--cache-dir", str(cache),
            "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    markers = sorted(cache.glob("sub-*/prepared.json"))
    assert len(markers) == 2
    prepared = json.loads(markers[0].read_text())
    assert {"t2", "swi", "qsm", "mask", "dseg"} <= set(prepared["files"])
    rec = json.loads(record_path(out).read_text())
    assert len(rec["training"]["subjects_validation"]) == 1
    assert rec["validation"]["n_subjects"] == 1
    mtimes = [m.stat().st_mtime for m in markers]
    # resuming to more steps reuses the cached preprocessing
    assert main(args[:args.index("--steps")] + ["--steps", "4"] + args[args.index("--steps") + 2:]
                + ["--resume"]) == 0
    assert [m.stat().st_mtime for m in markers] == mtimes
    ck = torch.load(checkpoint_path(out), weights_only=True)
    assert ck["step"] == 4
    assert [h["step"] for h in json.loads(ck["state"])["history"]] == [2, 4]
    # the model file holds the best validated weights (step 2 or 4)
    assert json.loads(record_path(out).read_text())["training"]["steps_done"] in (2, 4)
    Predictor.from_file(out)


def test_bundled_default_model_loads_with_a_complete_record():
    from deepmir_tasks.model.modelfile import DEFAULT_MODEL, record_path
    from deepmir_tasks.model.predictor import Predictor

    assert DEFAULT_MODEL.exists(), "the bundled model is part of the package"
    assert DEFAULT_MODEL.stat().st_size < 50e6
    pred = Predictor.from_file()  # checks the SHA-256 and the architecture
    rec = pred.record
    assert pred.modalities == ["t2", "swi", "qsm"]
    assert pred.classes == ["background", "cmb", "iron"]
    # what it was trained on and how: the command, the randomised profile, modality dropout, and
    # the model it was fine-tuned from
    assert "pipelines.bundled_model" in rec["training"]["command"] and "--profile randomised" in rec["training"]["command"]
    assert rec["training"]["config"]["modality_dropout"] > 0 and pred.any_subset
    assert len(rec["training"]["initialised_from"]["weights_sha256"]) == 64
    # calibrated lesion rules and the held-out figures of the lesion table are in the record
    assert set(rec["inference"]["lesions"]) >= {"threshold", "min_voxels", "min_prob_cmb", "min_prob_iron"}
    shipped = rec["validation"]["held_out_test"]["as_shipped"]
    assert shipped["cmb"]["on_calcification"] == 0 and shipped["n_subjects"] >= 6
    data = rec["training"]["data"]
    train_seeds = set(range(data["train_cohort"]["seeds"][0], data["train_cohort"]["seeds"][1] + 1))
    for cohort in ("calibration_cohort", "test_cohort"):       # held out from training
        lo, hi = data[cohort]["seeds"]
        assert not train_seeds & set(range(lo, hi + 1))
    # the out-of-distribution figures are recorded with it; the modality table, if it was measured
    # with an earlier inference, beside the inference it was measured with, and if it was measured
    # with the weights this model was trained from, with that model's figures and rules
    assert set(rec["validation"]["independent_generator"]) >= {"default_7300000_7300002", "unseen_7400000_7400002"}
    starts = [(rec["validation"], rec["inference"])]
    earlier = rec["training"].get("initialised_from", {})
    if "previous_validation" in earlier:
        starts.append((earlier["previous_validation"], earlier["previous_inference"]))
    found = []
    for level, inference in starts:  # the latest measurement, else the one before it, each with its rules
        while "modality_table" not in level and "before_this_evaluation" in level:
            level, inference = level["before_this_evaluation"], level["before_this_evaluation"].get("inference")
        if "modality_table" in level:
            found.append((level, inference))
            break
    level, inference = found[0]
    assert len(level["modality_table"]["rows"]) == 7 and "lesions" in (inference or {})
    assert rec == json.loads(record_path(DEFAULT_MODEL).read_text())
    vols = {m: np.random.default_rng(0).normal(size=(32, 32, 16)).astype(np.float32) for m in pred.modalities}
    probs = pred.predict(vols, None)
    assert probs.shape == (3, 32, 32, 16)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
