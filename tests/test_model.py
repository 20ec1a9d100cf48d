"""The DEEPMIR network, model files, predictor and training pieces on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepmir_tasks.io import InputError
from deepmir_tasks.model.modelfile import load_model, record_path, save_model
from deepmir_tasks.model.predictor import MissingModalityError, Predictor, segment_subject
from deepmir_tasks.model.train import (
    PatchSampler,
    checkpoint_path,
    dice_ce_loss,
    lesion_metrics,
    match_lesions,
    split_folds,
)
from deepmir_tasks.model.unet import UNet
from helpers.model import TINY_RECORD, synthetic_subject, train_subject


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_model(path, seed=0, record=None):
    torch.manual_seed(seed)
    rec = json.loads(json.dumps(record or TINY_RECORD))
    net = UNet(**{k: v for k, v in rec["architecture"].items() if k != "name"})
    net.train()
    with torch.no_grad():  # give batch-norm non-trivial running statistics
        for _ in range(3):
            net(torch.randn(2, rec["architecture"]["in_channels"], 16, 16, 16) * 2 + 0.5)
    net.eval()
    save_model(net, path, rec)
    return net, rec


# ---------------------------------------------------------------------------- network
@pytest.mark.parametrize("levels", [2, 3, 4, 5])
@pytest.mark.parametrize("channels,n_classes", [(1, 2), (2, 2), (3, 3)])
def test_unet_output_shape_for_each_depth_and_channel_set(levels, channels, n_classes):
    net = UNet(channels, n_classes, levels=levels, base=4).eval()
    m = net.required_multiple
    assert m == 2 ** (levels - 1)
    x = torch.randn(1, channels, 2 * m, m, 3 * m)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, n_classes, 2 * m, m, 3 * m)
    assert torch.isfinite(y).all()


def test_unet_rejects_sizes_that_do_not_divide():
    net = UNet(3, 3, levels=4, base=4).eval()
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.randn(1, 3, 12, 16, 16))


def test_unet_2d_variant_and_width_cap():
    net = UNet(9, 3, levels=5, base=8, dim=2, max_width=32).eval()
    assert net.widths == [8, 16, 32, 32, 32]
    with torch.no_grad():
        assert net(torch.randn(2, 9, 32, 48)).shape == (2, 3, 32, 48)


def test_default_is_five_levels_base_16():
    net = UNet()
    assert (net.levels, net.base, net.dim) == (5, 16, 3)


# ---------------------------------------------------------------------------- model files
def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    net, rec = _tiny_model(tmp_path / "m.safetensors")
    loaded, rec2 = load_model(tmp_path / "m.safetensors")
    x = torch.randn(1, 3, 16, 24, 16)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert rec2["classes"] == ["background", "cmb", "iron"]
    assert len(rec2["weights_sha256"]) == 64
    assert rec2["weights_file"] == "m.safetensors"


def test_tampered_weights_give_one_line_sha_error(tmp_path):
    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256") as err:
        load_model(path)
    assert "\n" not in str(err.value) and "m.safetensors" in str(err.value)


def test_corrupt_weights_file_gives_clear_error(tmp_path):
    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    path.write_bytes(b"this is not a safetensors file at all")
    rec = json.loads(record_path(path).read_text())
    from deepmir_tasks.model.modelfile import sha256_file

    rec["weights_sha256"] = sha256_file(path)  # the record agrees, the content is garbage
    record_path(path).write_text(json.dumps(rec))
    with pytest.raises(InputError, match="safetensors") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_missing_record_and_wrong_architecture(tmp_path):
    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    rec = json.loads(record_path(path).read_text())
    rec["architecture"]["base"] = 16
    record_path(path).write_text(json.dumps(rec))
    with pytest.raises(InputError, match="do not fit the architecture"):
        load_model(path)
    record_path(path).unlink()
    with pytest.raises(InputError, match="record is missing"):
        load_model(path)


# ---------------------------------------------------------------------------- predictor
def test_model_needing_qsm_refuses_subject_without_it(tmp_path):
    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    pred = Predictor.from_file(path)
    vols, mask, *_ = synthetic_subject(1, shape=(24, 24, 16))
    del vols["qsm"]
    with pytest.raises(MissingModalityError, match="QSM"):
        pred.predict(vols, mask)
    from deepmir_tasks.io import save_nifti

    files = {m: save_nifti(v, np.eye(4), tmp_path / f"sub-01_{m}.nii.gz") for m, v in vols.items()}
    with pytest.raises(InputError, match="needs QSM") as err:
        segment_subject(files["t2"], files["swi"], None, None, tmp_path / "out", path)
    assert "\n" not in str(err.value)


def test_model_trained_with_modality_dropout_runs_without_qsm_as_a_zero_channel(tmp_path):
    """A model whose record says it was trained with modality dropout serves T2w + SWI: the missing
    QSM is the zero channel dropout showed it (a QSM of 0 ppm everywhere normalises to the same)."""
    rec = json.loads(json.dumps(TINY_RECORD))
    rec.setdefault("training", {})["config"] = {"modality_dropout": 0.3}
    path = tmp_path / "m.safetensors"
    _tiny_model(path, record=rec)
    pred = Predictor.from_file(path)
    vols, mask, *_ = synthetic_subject(1, shape=(24, 24, 16))
    with_qsm = pred.predict(vols, mask)
    no_qsm = pred.predict({k: v for k, v in vols.items() if k != "qsm"}, mask)
    zero_qsm = pred.predict({**vols, "qsm": np.zeros_like(vols["qsm"])}, mask)
    assert np.allclose(no_qsm, zero_qsm, atol=1e-6) and not np.allclose(no_qsm, with_qsm, atol=1e-3)
    with pytest.raises(MissingModalityError):          # at least one of its modalities is needed
        pred.predict({}, mask)
    from deepmir_tasks.io import save_nifti

    files = {m: save_nifti(v, np.eye(4), tmp_path / f"sub-01_{m}.nii.gz") for m, v in vols.items()}
    out = segment_subject(files["t2"], files["swi"], None, None, tmp_path / "out", path)
    sidecar = json.loads(out["dseg"].with_name(out["dseg"].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["ModalitiesUsed"] == ["t2", "swi"]


def test_sliding_windows_agree_with_whole_volume(tmp_path):
    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    vols, mask, *_ = synthetic_subject(2, shape=(44, 40, 36))
    whole = Predictor.from_file(path).predict(vols, mask)
    windows = Predictor.from_file(path, max_voxels=0, window=24, overlap=0.5).predict(vols, mask)
    assert whole.shape == windows.shape == (3, 44, 40, 36)
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)
    inner = (slice(None),) + (slice(6, -6),) * 3  # away from zero-padded borders
    assert np.abs(whole[inner] - windows[inner]).max() < 0.05
    assert np.abs(whole - windows).mean() < 1e-3


def test_tta_and_threads_and_mask(tmp_path):
    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    vols, mask, *_ = synthetic_subject(3, shape=(32, 32, 24))
    pred = Predictor.from_file(path, threads=1, tta=True)
    probs = pred.predict(vols, mask)
    assert probs.dtype == np.float32
    assert np.all(probs[0][~mask] == 1.0) and np.all(probs[1:, ~mask] == 0)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    plain = pred.predict(vols, mask, tta=False)
    assert not np.allclose(plain, probs)  # TTA really averages something else
    empty = pred.predict(vols, np.zeros_like(mask))
    assert np.all(empty[0] == 1)


def test_a_model_calibrated_with_tta_always_predicts_with_it(tmp_path):
    """Its record's minimum probabilities were chosen on augmented probabilities, so neither the
    default nor ``tta=False`` turns the augmentation off; the sidecar and the run's provenance say so."""
    from deepmir_tasks.io import save_nifti
    from deepmir_tasks.lesions.tasks import ReadLesionRules
    from deepmir_tasks.model.modelfile import calibrated_with_tta, record_path

    plain_path, tta_path = tmp_path / "plain.safetensors", tmp_path / "tta.safetensors"
    _tiny_model(plain_path)
    rec = json.loads(json.dumps(TINY_RECORD))
    rec["inference"] = {**rec.get("inference", {}), "tta": True}
    _tiny_model(tta_path, record=rec)
    assert calibrated_with_tta(tta_path) and calibrated_with_tta(rec) and not calibrated_with_tta(plain_path)
    vols, mask, *_ = synthetic_subject(3, shape=(32, 32, 24))
    plain = Predictor.from_file(plain_path).predict(vols, mask)
    augmented = Predictor.from_file(plain_path, tta=True).predict(vols, mask)
    assert not np.allclose(plain, augmented)
    pred = Predictor.from_file(tta_path)
    assert pred.tta and pred.uses_tta(False)
    np.testing.assert_array_equal(pred.predict(vols, mask), augmented)
    np.testing.assert_array_equal(pred.predict(vols, mask, tta=False), augmented)
    files = {m: save_nifti(v, np.eye(4), tmp_path / f"sub-01_{m}.nii.gz") for m, v in vols.items()}
    out = segment_subject(files["t2"], files["swi"], files["qsm"], None, tmp_path / "out", tta_path, tta=False)
    sidecar = json.loads(out["dseg"].with_name(out["dseg"].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["TestTimeAugmentation"] is True
    for path, expected in ((tta_path, True), (plain_path, False)):
        task = ReadLesionRules(record=record_path(path), provenance={"tta": False})
        assert task(worker="debug", cache_root=tmp_path / "cache").provenance["tta"] is expected


def test_labels_are_the_most_probable_class_inside_the_mask(tmp_path):
    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    pred = Predictor.from_file(path)
    probs = np.zeros((3, 2, 2, 1), np.float32)
    probs[:, 0, 0, 0] = [0.5, 0.3, 0.2]
    probs[:, 1, 0, 0] = [0.1, 0.6, 0.3]
    probs[:, 0, 1, 0] = [0.2, 0.3, 0.5]
    probs[:, 1, 1, 0] = [0.0, 0.1, 0.9]
    assert pred.labels(probs)[:, :, 0].tolist() == [[0, 2], [1, 2]]
    mask = np.ones((2, 2, 1), bool)
    mask[1, 1, 0] = False
    assert pred.labels(probs, mask)[:, :, 0].tolist() == [[0, 2], [1, 0]]


@pytest.mark.parametrize("key", ["thresholds", "component_min_prob"])
def test_a_record_with_a_second_set_of_rules_is_refused(tmp_path, key):
    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    rec = json.loads(record_path(path).read_text())
    rec["inference"] = {key: {"cmb": 0.8}}
    record_path(path).write_text(json.dumps(rec))
    with pytest.raises(InputError, match=f"inference.{key}, which is no longer read.*inference.lesions"):
        Predictor.from_file(path)


def test_segment_subject_writes_bids_named_outputs(tmp_path):
    from deepmir_tasks.io import load_image, save_nifti

    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    vols, mask, *_ = synthetic_subject(4, shape=(24, 24, 16))
    aff = np.diag([0.9, 0.9, 1.1, 1.0])
    files = {m: save_nifti(v, aff, tmp_path / f"sub-07_ses-1_space-T2w_desc-preproc_{m}.nii.gz")
             for m, v in vols.items()}
    mfile = save_nifti(mask.astype(np.uint8), aff, tmp_path / "mask.nii.gz")
    out = segment_subject(files["t2"], files["swi"], files["qsm"], mfile, tmp_path / "out", path)
    assert out["dseg"].name == "sub-07_ses-1_space-T2w_desc-deepmir_dseg.nii.gz"
    assert out["probseg_cmb"].name == "sub-07_ses-1_space-T2w_label-CMB_probseg.nii.gz"
    import nibabel as nib

    raw = nib.load(str(out["dseg"]))
    assert raw.get_data_dtype() == np.uint8
    assert np.allclose(raw.affine, aff)
    labels = np.asarray(raw.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    # the package's own loader reads the same labels back
    np.testing.assert_array_equal(np.asarray(load_image(out["dseg"], allow_empty=True).dataobj), labels)
    # the labels are the most probable class of the written maps (the tiny record has no
    # thresholds), inside the mask, and background outside it
    cmb, iron = (np.asarray(load_image(out[k], allow_empty=True).dataobj) for k in ("probseg_cmb", "probseg_iron"))
    probs = np.stack([1.0 - cmb - iron, cmb, iron])
    assert np.all(labels[~mask] == 0)
    top = np.sort(probs, axis=0)
    clear = mask & (top[-1] - top[-2] > 1e-4)       # leave out near-ties (float rounding)
    assert clear.sum() > 0.9 * mask.sum()
    np.testing.assert_array_equal(labels[clear], np.argmax(probs, axis=0)[clear])
    side = json.loads((tmp_path / "out" / "sub-07_ses-1_space-T2w_desc-deepmir_dseg.json").read_text())
    assert side["ModelWeightsSHA256"] == json.loads(record_path(path).read_text())["weights_sha256"]
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_segment_lesions_pydra_task(tmp_path, monkeypatch):
    from deepmir_tasks.io import save_nifti
    from deepmir_tasks.model.tasks import SegmentLesions

    path = tmp_path / "m.safetensors"
    _tiny_model(path)
    vols, mask, *_ = synthetic_subject(5, shape=(24, 24, 16))
    files = {m: save_nifti(v, np.eye(4), tmp_path / f"sub-01_{m}.nii.gz") for m, v in vols.items()}
    mfile = save_nifti(mask.astype(np.uint8), np.eye(4), tmp_path / "sub-01_mask.nii.gz")
    monkeypatch.setenv("DEEPMIR_THREADS", "1")
    task = SegmentLesions(t2=files["t2"], swi=files["swi"], qsm=files["qsm"], mask=mfile, model=path)
    res = task(worker="debug", cache_root=tmp_path / "cache")
    assert not hasattr(task, "threads")  # a thread count is not an input, so it never changes the cache key
    assert str(res.dseg).endswith("sub-01_space-T2w_desc-deepmir_dseg.nii.gz")
    assert str(res.probseg_iron).endswith("label-iron_probseg.nii.gz")


# ---------------------------------------------------------------------------- training pieces
def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    subj = [train_subject(10), train_subject(11)]
    sampler = PatchSampler(subj, patch=16, lesion_fraction=0.8, augment=False)
    rng = np.random.default_rng(0)
    batches = [sampler.sample(rng, 4) for _ in range(4)]
    net = UNet(3, 3, levels=3, base=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def mean_loss():
        net.eval()
        with torch.no_grad():
            return float(np.mean([float(dice_ce_loss(net(x), y, [1, 3, 3])) for x, y in batches]))

    before = mean_loss()
    net.train()
    for i in range(40):
        x, y = batches[i % len(batches)]
        loss = dice_ce_loss(net(x), y, [1, 3, 3])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mean_loss()
    assert after < 0.7 * before


def test_patch_sampler_over_represents_lesions_and_augments():
    subj = [train_subject(12)]
    sampler = PatchSampler(subj, patch=16, lesion_fraction=0.67, augment=True)
    rng = np.random.default_rng(1)
    x, y = sampler.sample(rng, 24)
    assert x.shape == (24, 3, 16, 16, 16) and y.shape == (24, 16, 16, 16)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    with_lesion = int(((y > 0).flatten(1).any(1)).sum())
    lesion_share = (subj[0].label > 0).mean()
    assert with_lesion >= 10  # far more than the ~1 % of brain voxels that are lesion
    assert lesion_share < 0.05
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}
    # the same seed gives the same batch
    x2, y2 = sampler.sample(np.random.default_rng(1), 24)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_dice_ce_loss_is_low_for_perfect_logits_and_high_for_wrong_ones():
    y = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    y[0, 2:4, 2:4, 2:4] = 1
    y[0, 5:7, 5:7, 5:7] = 2
    good = torch.nn.functional.one_hot(y, 3).permute(0, 4, 1, 2, 3).float() * 20
    bad = torch.roll(good, 1, dims=1)
    assert float(dice_ce_loss(good, y, [1, 3, 3])) < 0.01
    assert float(dice_ce_loss(bad, y, [1, 3, 3])) > 5


def test_match_lesions_is_one_to_one_greedy_within_5_mm():
    true = np.array([[0, 0, 0], [10, 0, 0]], float)
    pred = np.array([[1, 0, 0], [0.5, 0, 0], [10, 4.9, 0], [30, 0, 0]], float)
    pairs = match_lesions(pred, true, 5.0)
    assert sorted((p, t) for p, t, _ in pairs) == [(1, 0), (2, 1)]
    assert match_lesions(np.zeros((0, 3)), true) == []


def test_lesion_metrics_perfect_and_shifted():
    _, _, dseg, aff, centres = synthetic_subject(6, shape=(40, 40, 32))
    perfect = lesion_metrics(dseg, dseg, aff, other_xyz={"calcification": centres["calcification"]})
    for c in ("cmb", "iron"):
        assert perfect[c]["fn"] == 0 and perfect[c]["fp"] == 0 and perfect[c]["tp"] > 0
        assert perfect[c]["on_calcification"] == 0
    one = np.zeros((24, 24, 24), np.uint8)
    one[9:12, 9:12, 9:12] = 1
    for shift, hit in ((4, 1), (6, 0)):
        m = lesion_metrics(np.roll(one, shift, axis=2), one, np.eye(4))
        assert (m["cmb"]["tp"], m["cmb"]["fp"], m["cmb"]["fn"]) == (hit, 1 - hit, 1 - hit)
    iron = np.roll(one, 2, axis=2) * 2  # right place, wrong class
    assert lesion_metrics(iron, one, np.eye(4))["cmb"]["tp"] == 0
    # a CMB predicted on a calcification is counted
    calc = np.zeros_like(dseg)
    c = centres["calcification"][0].astype(int)
    calc[tuple(c)] = 1
    assert lesion_metrics(calc, dseg, aff, other_xyz={"calcification": centres["calcification"]})["cmb"]["on_calcification"] == 1


def test_split_folds_by_participant_covers_everyone_once():
    keys = [f"sub-{i:02d}" for i in range(10)] + ["sub-03_ses-2"]
    vals = []
    for f in range(5):
        tr, va = split_folds(keys, 5, f, seed=3)
        assert not set(tr) & set(va)
        assert set(tr) | set(va) == set(keys)
        # sessions of one participant stay on one side
        assert ("sub-03" in va) == ("sub-03_ses-2" in va)
        vals += va
    assert sorted(vals) == sorted(keys)
    assert split_folds(keys, 1, 0) == (keys, [])


# ---------------------------------------------------------------------------- the training loop
def _tiny_config(**kw):
    from deepmir_tasks.model.train import TrainConfig

    base = dict(levels=3, base=8, max_width=32, patch=16, batch=2, steps=6, folds=3, fold=0,
                validate_every=3, seed=5, checkpoint_seconds=1e9)
    base.update(kw)
    return TrainConfig(**base)


def test_train_loop_exports_validated_model_and_resume_is_exact(tmp_path, monkeypatch):
    import workflows.train as tr
    from helpers.model import identity_prepare, write_synthetic_bids

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    bids, ann = write_synthetic_bids(tmp_path / "bids", [21, 22, 23])

    straight = tr.train(bids, ann, tmp_path / "a.safetensors", _tiny_config(), progress=False, threads=1,
                        device="cpu")
    assert straight["step"] == 6
    rec = json.loads(record_path(straight["model"]).read_text())
    assert rec["training"]["subjects_validation"] and len(rec["training"]["subjects_train"]) == 2
    assert "cmb" in rec["validation"] and "sensitivity" in rec["validation"]["cmb"]
    assert [h["step"] for h in straight["history"]] == [3, 6]
    Predictor.from_file(straight["model"])  # the exported file loads and passes its checks

    # 4 steps, stop, resume to 6: the same weights as 6 steps in one go
    first = tr.train(bids, ann, tmp_path / "b.safetensors", _tiny_config(), progress=False, threads=1,
                     device="cpu", stop_at=4)
    assert first["step"] == 4
    resumed = tr.train(bids, ann, tmp_path / "b.safetensors", _tiny_config(steps=6), progress=False,
                       threads=1, device="cpu", resume=True)
    assert resumed["step"] == 6
    a = torch.load(checkpoint_path(tmp_path / "a.safetensors"), weights_only=True)["model"]
    b = torch.load(checkpoint_path(tmp_path / "b.safetensors"), weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_resume_from_a_missing_or_broken_checkpoint_is_an_input_error(tmp_path, monkeypatch):
    import workflows.train as tr
    from helpers.model import identity_prepare, write_synthetic_bids

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    bids, ann = write_synthetic_bids(tmp_path / "bids", [24, 25])
    with pytest.raises(InputError, match="does not exist"):
        tr.train(bids, ann, tmp_path / "m.safetensors", _tiny_config(folds=1), resume=tmp_path / "nope.pt",
                 progress=False)
    bad = tmp_path / "bad.ckpt.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="checkpoint could not be read"):
        tr.train(bids, ann, tmp_path / "m.safetensors", _tiny_config(folds=1), resume=bad, progress=False)
    with pytest.raises(InputError, match="no subject"):
        tr.train(tmp_path / "bids" / "sub-24", ann, tmp_path / "m.safetensors", _tiny_config(folds=1),
                 progress=False)


def test_deepmir_train_command(tmp_path, monkeypatch, capsys):
    from helpers.model import identity_prepare, write_synthetic_bids
    from pipelines.cli import main

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    bids, ann = write_synthetic_bids(tmp_path / "bids", [31, 32])
    out = tmp_path / "m.safetensors"
    base = ["train", str(bids), "--annotations", str(ann), "--out", str(out), "--levels", "3", "--base", "4",
            "--patch", "16", "--threads", "1", "--no-progress", "--device", "cpu"]
    assert main(base + ["--patch", "18"]) == 2
    assert "multiple of" in capsys.readouterr().err
    assert main(base + ["--folds", "5"]) == 2  # two participants cannot make five folds
    assert "participants" in capsys.readouterr().err
    assert main(base + ["--folds", "1", "--steps", "2", "--modalities", "t2", "qsm", "--classes", "cmb"]) == 0
    rec = json.loads(record_path(out).read_text())
    assert rec["modalities"] == ["t2", "qsm"] and rec["classes"] == ["background", "cmb"]
    assert rec["training"]["command"].startswith("deepmir train") or rec["training"]["command"] == "deepmir train "
    assert checkpoint_path(out).exists()
    # a CMB-only, T2w+QSM model: SWI may be absent, QSM may not
    pred = Predictor.from_file(out)
    vols, mask, *_ = synthetic_subject(33, shape=(24, 24, 16))
    assert pred.predict({"t2": vols["t2"], "qsm": vols["qsm"]}, mask).shape == (2, 24, 24, 16)
    with pytest.raises(MissingModalityError, match="QSM"):
        pred.predict({"t2": vols["t2"], "swi": vols["swi"]}, mask)


def test_patch_sampler_centres_hard_negatives_on_mimics():
    subj = [train_subject(13)]
    calc = subj[0].extra["mimics"]["calcification"]
    sampler = PatchSampler(subj, patch=16, lesion_fraction=0.0, augment=False, mimic_fraction=1.0)
    rng = np.random.default_rng(2)
    for _ in range(10):
        si, c = sampler.centre(rng)
        assert np.min(np.abs(calc - c).max(axis=1)) <= 4  # within the jitter of a calcification


def test_mined_hard_examples_are_written_and_sampled(tmp_path):
    from deepmir_tasks.model.train import HARD_EXAMPLES, mine_hard_examples

    subj = train_subject(17)
    cmb = subj.lesions[1]  # voxel lists of the CMBs
    probs = np.zeros((3,) + subj.label.shape, np.float32)
    probs[0] = 1.0
    for vox in cmb[1:]:
        probs[1][tuple(vox.T)] = 0.999              # found
    probs[1][tuple(cmb[0].T)] = 0.4                  # weak: found at 0.4 only
    for vox in subj.lesions[2]:
        probs[2][tuple(vox.T)] = 0.99
    fp = subj.extra["mimics"]["calcification"][0].astype(int)
    probs[1][tuple(fp)] = 0.8                        # fired on a calcification

    class Fake:
        classes, source = ["background", "cmb", "iron"], "fake"

        def predict(self, volumes, mask):
            return probs

    counts = mine_hard_examples(Fake(), [subj], tmp_path)
    assert counts == {subj.key: {"false_positives": 1, "weak_lesions": 1}}
    rec = json.loads((tmp_path / subj.key / HARD_EXAMPLES).read_text())
    np.testing.assert_allclose(rec["false_positives"][0], fp, atol=0.01)
    np.testing.assert_allclose(rec["weak_lesions"][0], cmb[0].mean(axis=0), atol=0.01)

    subj.extra["hard_examples"] = rec
    rng = np.random.default_rng(0)
    hard = PatchSampler([subj], patch=16, lesion_fraction=0.0, augment=False, hard_fraction=1.0)
    for _ in range(10):
        _, c = hard.centre(rng)
        assert np.abs(c - cmb[0].mean(axis=0)).max() <= 16 // 3 + 1
    assert any(np.array_equal(ijk, fp) for _, ijk in hard.mimics)  # a mined background look-alike


def test_lesion_rules_come_from_the_record_with_defaults(tmp_path):
    from deepmir_tasks.model.modelfile import DEFAULT_MODEL, LESION_RULE_DEFAULTS, lesion_rules

    assert lesion_rules(tmp_path / "none.safetensors") == LESION_RULE_DEFAULTS
    weights = tmp_path / "m.safetensors"
    record_path(weights).write_text(json.dumps({"inference": {"lesions": {"threshold": 0.35, "min_prob_cmb": 0.9,
                                                                           "unknown": 1}}}))
    rules = lesion_rules(weights)
    assert rules == dict(LESION_RULE_DEFAULTS, threshold=0.35, min_prob_cmb=0.9)
    # the bundled model's record carries calibrated rules
    assert set(lesion_rules(DEFAULT_MODEL)) == set(LESION_RULE_DEFAULTS)


def test_small_cmb_labels_grow_to_cover_an_offset_dot_and_large_ones_do_not():
    from deepmir_tasks.model.train import class_labels

    dseg = np.zeros((20, 20, 20), np.uint8)
    dseg[5, 5, 5] = 1                       # a one-voxel microbleed
    dseg[12:16, 12:16, 12:16] = 1           # a 64-voxel one
    dseg[3:6, 14:17, 3:6] = 2               # iron
    label, lesions = class_labels(dseg, ("cmb", "iron"), grow_small_cmb=1)
    assert int((label == 1).sum()) == 27 + 64 and label[6, 6, 6] == 1 and label[4, 5, 5] == 1
    assert label[11, 12, 12] == 0 and int((label == 2).sum()) == 27   # large CMB and iron untouched
    assert [len(v) for v in lesions[1]] == [1, 64]                     # lesion lists stay the annotation's
    plain, _ = class_labels(dseg, ("cmb", "iron"))
    assert int((plain == 1).sum()) == 65


def test_resumed_schedule_keeps_the_stored_rate_unless_overridden(tmp_path):
    """A stretched schedule on resume keeps the checkpoint's peak rate; an ``lr`` override replaces it,
    so the rate can continue where the checkpoint's schedule was."""
    import dataclasses

    from deepmir_tasks.model.train import TrainConfig, _resume_config, learning_rate

    stored = TrainConfig(steps=24000, lr=2e-3)
    path = tmp_path / "m.ckpt.pt"
    torch.save({"model": {}, "optimizer": {}, "step": 22500, "numpy_rng": {},
                "config": json.dumps(dataclasses.asdict(stored))}, str(path))
    kept, _ = _resume_config(TrainConfig(steps=25500), path, path, {})
    lowered, _ = _resume_config(TrainConfig(steps=25500), path, path, {"lr": 1.5e-3})
    assert kept.lr == 2e-3 and lowered.lr == 1.5e-3 and kept.steps == lowered.steps == 25500
    at_stop = learning_rate(stored, 22500)
    assert learning_rate(kept, 22500) > 1.3 * at_stop                   # stretching alone raises it
    assert abs(learning_rate(lowered, 22500) - at_stop) < 0.1 * at_stop  # the override keeps it
