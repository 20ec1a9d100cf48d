"""``deepmir review``: decisions saved and resumed, exported as training labels, two raters'
agreement, and ``deepmir train --init`` (fine-tuning). Test data: a tiny hand-made output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepmir_tasks.bids_names import DERIVATIVE_NAMES, derivative_name
from deepmir_tasks.io import InputError, save_nifti, write_json, write_tsv
from deepmir_tasks.review import find_review_subjects, read_decisions, save_decision
from deepmir_tasks.review.decisions import rater_decisions
from helpers.model import tiny_model

SHAPE = (40, 40, 30)
WORK_AFFINE = np.array([[1.0, 0, 0, -20.0], [0, 1.0, 0, -22.0], [0, 0, 1.0, -10.0], [0, 0, 0, 1]])
RAW_AFFINE = np.array([[0.8, 0, 0, -22.0], [0, 0.8, 0, -24.0], [0, 0, 2.0, -12.0], [0, 0, 0, 1]])
RAW_SHAPE = (56, 56, 17)

#: the lesions of the hand-made subject (working-grid voxel centres)
LESIONS = {
    "k1": dict(ijk=(12, 12, 10), r=2.0, cls="cmb", table="kept", prob=0.9),
    "k2": dict(ijk=(28, 12, 10), r=2.5, cls="iron", table="kept", prob=0.9),
    "k3": dict(ijk=(12, 28, 20), r=1.5, cls="cmb", table="kept", prob=0.9),
    "d1": dict(ijk=(28, 28, 20), r=2.0, cls="cmb", table="dropped", prob=0.8, reason="qsm_not_positive"),
    "d2": dict(ijk=(20, 20, 6), r=1.5, cls="cmb", table="dropped", prob=0.6, reason="qsm_negative"),
    "missed": dict(ijk=(20, 30, 14), r=2.0, cls="cmb", table=None, prob=0.0),
}


def ball(centre, r, shape=SHAPE):
    g = np.meshgrid(*[np.arange(n) - c for n, c in zip(shape, centre)], indexing="ij")
    return sum(x * x for x in g) <= r * r


def world(ijk, affine=WORK_AFFINE):
    return affine[:3, :3] @ np.asarray(ijk, float) + affine[:3, 3]


def make_output_dir(root: Path, seed: int = 0, vein: bool = False) -> Path:
    """A tiny ``deepmir run`` output (sub-01) with the lesions of :data:`LESIONS`, a raw BIDS
    dataset with the subject's T2w on another grid, and ``dataset_description.json`` linking them."""
    rng = np.random.default_rng(seed)
    out, bids = root / "out", root / "bids"
    anat = out / "sub-01" / "anat"
    g = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    mask = sum(((x - (n - 1) / 2) / (n / 2 - 1)) ** 2 for x, n in zip(g, SHAPE)) <= 1
    t2 = 1.0 + 0.03 * rng.standard_normal(SHAPE)
    swi = 1.0 + 0.03 * rng.standard_normal(SHAPE)
    qsm = 0.01 * rng.standard_normal(SHAPE)
    dseg = np.zeros(SHAPE, np.uint8)
    prob = {"cmb": np.zeros(SHAPE, np.float32), "iron": np.zeros(SHAPE, np.float32)}
    rows = {"kept": [], "dropped": []}
    for cid, les in LESIONS.items():
        b = ball(les["ijk"], les["r"])
        dark = 0.6 if les["cls"] == "cmb" else 0.35
        swi[b] -= dark
        t2[b] -= dark / 2
        qsm[b] += (0.4 if les["cls"] == "cmb" else 0.15) * (-1 if cid == "d2" else 1)
        prob[les["cls"]][b] = les["prob"]
        if les["table"] == "kept":
            dseg[b] = 1 if les["cls"] == "cmb" else 2
        if les["table"]:
            x, y, z = world(les["ijk"])
            rows[les["table"]].append({
                "participant_id": "sub-01", "lesion_id": int(cid[1:]), "label": les["cls"], "n_voxels": int(b.sum()),
                "volume_mm3": float(b.sum()), "x_mm": x, "y_mm": y, "z_mm": z, "i": les["ijk"][0],
                "j": les["ijk"][1], "k": les["ijk"][2], "prob_max": les["prob"], "qsm_mean_ppm": 0.3,
                "region": "deep", **({"reason": les["reason"]} if les["table"] == "dropped" else {})})
    if vein:  # a dark tube along k through (30, 20, .): SWI-dark, QSM-positive, not a focal lesion
        tube = (np.abs(g[0] - 30) <= 1) & (np.abs(g[1] - 20) <= 1) & mask
        swi[tube] -= 0.6
        qsm[tube] += 0.3
    name = {k: anat / derivative_name(k, "sub-01") for k in DERIVATIVE_NAMES}
    save_nifti(t2 * mask, WORK_AFFINE, name["t2"], dtype=np.float32)
    save_nifti(swi * mask, WORK_AFFINE, name["swi"], dtype=np.float32)
    save_nifti(qsm * mask, WORK_AFFINE, name["qsm"], dtype=np.float32)
    save_nifti(mask.astype(np.uint8), WORK_AFFINE, name["mask"])
    save_nifti(dseg, WORK_AFFINE, name["dseg"])
    save_nifti(prob["cmb"], WORK_AFFINE, name["probseg_cmb"])
    save_nifti(prob["iron"], WORK_AFFINE, name["probseg_iron"])
    write_tsv(pd.DataFrame(rows["kept"]), name["lesions"])
    write_tsv(pd.DataFrame(rows["dropped"]), name["dropped"])
    write_json({"Name": "DEEPMIR", "DatasetType": "derivative", "SourceDatasets": [{"URL": str(bids)}]},
               out / "dataset_description.json")
    write_json({"Name": "raw", "BIDSVersion": "1.9.0"}, bids / "dataset_description.json")
    save_nifti(np.ones(RAW_SHAPE, np.float32), RAW_AFFINE, bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    return out


#: the decisions of the main test: relabel, accept, reject, accept a dropped one, a calcification
DECISIONS = {"k1": "iron", "k2": "iron", "k3": "not_lesion", "d1": "cmb", "d2": "calcification"}


@pytest.fixture
def output(tmp_path):
    return make_output_dir(tmp_path)


def _subject(out):
    (subject,) = find_review_subjects(out)
    return subject


# --------------------------------------------------------------------------------- decisions
def test_decisions_round_trip_with_rater_time_note_and_sidecar(output):
    subject = _subject(output)
    row = save_decision(subject, "alice", "k1", "iron", "looks like  globus\tpallidus", now="2024-05-01T10:00:00+00:00")
    assert row["decision"] == "iron" and row["note"] == "looks like globus pallidus"
    save_decision(subject, "alice", "k1", None, None, now="2024-05-01T10:05:00+00:00")  # touch: keeps both
    save_decision(subject, "bob", "k1", "cmb", now="2024-05-01T11:00:00+00:00")
    added = save_decision(subject, "alice", None, "cmb", ijk=(20, 30, 14))
    assert added["candidate_id"] == "a1" and added["source"] == "added"
    np.testing.assert_allclose([added["x_mm"], added["y_mm"], added["z_mm"]], world((20, 30, 14)))

    table = read_decisions(_subject(output))  # a fresh read: what a reload sees
    assert list(table["rater"]) == ["alice", "alice", "bob"]
    alice = rater_decisions(table, "alice")
    assert alice["k1"]["decision"] == "iron" and alice["k1"]["note"] == "looks like globus pallidus"
    assert alice["k1"]["time"] == "2024-05-01T10:05:00+00:00"
    assert alice["k1"]["model_label"] == "cmb" and alice["k1"]["source"] == "kept"
    assert rater_decisions(table, "bob")["k1"]["decision"] == "cmb"
    raw = subject.review_tsv.read_text().splitlines()
    assert raw[0].split("\t")[:4] == ["participant_id", "rater", "candidate_id", "source"]
    side = json.loads(subject.review_json.read_text())
    assert set(side["Raters"]) == {"alice", "bob"} and side["Raters"]["alice"]["Added"] == 1
    assert side["Raters"]["alice"]["LastChange"] >= "2024-05-01T10:05:00+00:00"
    assert side["SourceTables"]["lesions"]["File"] == "sub-01_space-T2w_desc-deepmir_lesions.tsv"
    assert len(side["SourceTables"]["dropped"]["SHA256"]) == 64


def test_bad_decisions_are_one_line_errors(output):
    subject = _subject(output)
    with pytest.raises(InputError, match="no candidate 'k9'"):
        save_decision(subject, "alice", "k9", "cmb")
    with pytest.raises(InputError, match="unknown decision"):
        save_decision(subject, "alice", "k1", "maybe")
    with pytest.raises(InputError, match="rater name"):
        save_decision(subject, "alice smith", "k1", "cmb")
    with pytest.raises(InputError, match="outside the grid"):
        save_decision(subject, "alice", None, "cmb", ijk=(40, 0, 0))
    subject.review_tsv.write_text("participant_id\trater\n")
    with pytest.raises(InputError, match="desc-review_lesions.tsv: decisions table lacks") as err:
        read_decisions(subject)
    assert "\n" not in str(err.value)


def test_decision_write_is_atomic(output, monkeypatch):
    subject = _subject(output)
    save_decision(subject, "alice", "k1", "iron")
    before = subject.review_tsv.read_bytes()

    def broken(self, path, *args, **kwargs):
        Path(path).write_text("participant_id\trat")  # half a file, then the disk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        save_decision(subject, "alice", "k2", "iron")
    monkeypatch.undo()
    assert subject.review_tsv.read_bytes() == before  # the last complete file, untouched
    assert sorted(p.name for p in subject.anat.iterdir() if p.name.startswith(".")) == []  # no temporaries
    assert rater_decisions(read_decisions(subject), "alice")["k1"]["decision"] == "iron"


def test_participant_filter_and_missing_outputs(output, tmp_path):
    with pytest.raises(InputError, match="sub-02"):
        find_review_subjects(output, ["02"])
    with pytest.raises(InputError, match="is this the output folder"):
        find_review_subjects(tmp_path / "bids")
    (output / "sub-01" / "anat" / "sub-01_space-T2w_desc-deepmir_dseg.nii.gz").unlink()
    with pytest.raises(InputError, match="dseg output is missing"):
        find_review_subjects(output)


# --------------------------------------------------------------------------------- export
def _decide_all(subject, rater="alice", decisions=DECISIONS, add=True):
    for cid, dec in decisions.items():
        save_decision(subject, rater, cid, dec)
    if add:
        save_decision(subject, rater, None, "cmb", ijk=LESIONS["missed"]["ijk"])


def test_working_grid_labels_follow_the_decisions(output):
    from deepmir_tasks.review.export import subject_labels

    subject = _subject(output)
    _decide_all(subject)
    labels, affine, report, mimics, undecided = subject_labels(subject, "alice")
    assert undecided == [] and np.allclose(affine, WORK_AFFINE)
    by_id = {r["candidate_id"]: r for r in report}
    # accepted/relabelled kept lesions keep their segmented extent exactly, with the decided class
    for cid, value in (("k1", 2), ("k2", 2)):
        b = ball(LESIONS[cid]["ijk"], LESIONS[cid]["r"])
        assert np.array_equal(labels[b], np.full(b.sum(), value)) and by_id[cid]["method"] == "dseg"
        assert by_id[cid]["n_voxels"] == b.sum()
    # rejected ones vanish
    assert not labels[ball(LESIONS["k3"]["ijk"], 3)].any() and by_id["k3"]["label_value"] == 0
    assert not labels[ball(LESIONS["d2"]["ijk"], 3)].any()
    # an accepted dropped candidate takes its probability-map component
    b = ball(LESIONS["d1"]["ijk"], LESIONS["d1"]["r"])
    assert by_id["d1"]["method"] == "probseg >= 0.5" and (labels[b] == 1).all()
    # the added point grew over the missed lesion (not a stand-in sphere)
    truth = ball(LESIONS["missed"]["ijk"], LESIONS["missed"]["r"])
    assert by_id["a1"]["method"] == "grown on SWI"
    grown = (labels == 1) & ball(LESIONS["missed"]["ijk"], 4.5)
    dice = 2 * (grown & truth).sum() / (grown.sum() + truth.sum())
    assert dice > 0.8, dice
    # nothing else is labelled
    expected = sum(ball(LESIONS[c]["ijk"], LESIONS[c]["r"]).sum() for c in ("k1", "k2", "d1"))
    assert int((labels > 0).sum()) == expected + grown.sum()
    assert sorted((m["kind"], m["candidate_id"]) for m in mimics) == [
        ("calcification", "d2"), ("cmb", "a1"), ("cmb", "d1"), ("iron", "k1"), ("iron", "k2")]


def test_added_point_on_a_vein_falls_back_to_a_sphere_and_says_so(tmp_path):
    from deepmir_tasks.review.export import SPHERE_RADIUS_MM, subject_labels

    out = make_output_dir(tmp_path, vein=True)
    subject = _subject(out)
    _decide_all(subject, add=False)
    save_decision(subject, "alice", None, "cmb", ijk=(30, 20, 15))  # on the vein
    save_decision(subject, "alice", None, "iron", ijk=(8, 20, 15))  # normal tissue: nothing to grow on
    labels, _, report, _, _ = subject_labels(subject, "alice")
    by_id = {r["candidate_id"]: r for r in report}
    assert by_id["a1"]["method"].startswith("sphere: ") and "reaches 5 mm" in by_id["a1"]["method"]
    assert by_id["a2"]["method"].startswith("sphere: ") and "no contrast" in by_id["a2"]["method"]
    assert by_id["a1"]["n_voxels"] == ball((30, 20, 15), SPHERE_RADIUS_MM["cmb"]).sum()
    assert labels[30, 20, 15] == 1 and labels[8, 20, 15] == 2


def test_undecided_candidates_stop_the_export_unless_asked(output):
    from deepmir_tasks.review.export import subject_labels

    subject = _subject(output)
    save_decision(subject, "alice", "k1", "not_lesion")
    with pytest.raises(InputError, match="has not decided 4 of 5 candidate") as err:
        subject_labels(subject, "alice")
    assert "desc-review_lesions.tsv" in str(err.value) and "\n" not in str(err.value)
    labels, _, report, _, undecided = subject_labels(subject, "alice", include_undecided=True)
    assert undecided == ["k2", "k3", "d1", "d2"]
    assert labels[LESIONS["k2"]["ijk"]] == 2 and labels[LESIONS["k3"]["ijk"]] == 1  # model's labels kept
    assert labels[LESIONS["k1"]["ijk"]] == 0 and labels[LESIONS["d1"]["ijk"]] == 0  # rejected / undecided dropped


@pytest.mark.slow  # ANTs resampling onto the raw grid
def test_export_writes_labels_on_the_raw_t2w_grid_that_training_finds(output, tmp_path, capsys):
    import nibabel as nib

    from deepmir_tasks.model.data import find_subjects, read_mimics
    from pipelines.cli import main

    subject = _subject(output)
    _decide_all(subject)
    annot = tmp_path / "annot"
    assert main(["review", str(output), "--export", str(annot), "--rater", "alice"]) == 0
    printed = capsys.readouterr().out
    assert "sub-01" in printed and "grown on SWI" in printed

    img = nib.load(annot / "sub-01" / "anat" / "sub-01_space-T2w_dseg.nii.gz")
    assert img.shape == RAW_SHAPE and np.allclose(img.affine, RAW_AFFINE)  # the raw T2w's grid
    data = np.asarray(img.dataobj)
    assert set(np.unique(data)) == {0, 1, 2}

    def at(cid):
        v = np.rint(np.linalg.solve(RAW_AFFINE[:3, :3], world(LESIONS[cid]["ijk"]) - RAW_AFFINE[:3, 3])).astype(int)
        return int(data[tuple(v)])

    assert [at(c) for c in ("k1", "k2", "k3", "d1", "d2", "missed")] == [2, 2, 0, 1, 0, 1]
    import cc3d

    assert cc3d.connected_components(data > 0, connectivity=26).max() == 4  # k1, k2, d1 and the added one
    report = pd.read_csv(annot / "review_export.tsv", sep="\t")
    assert dict(zip(report["candidate_id"], report["method"]))["a1"] == "grown on SWI"
    # training finds the subject there, and reads the calcification as a hard negative
    (ts,) = find_subjects(tmp_path / "bids", annot, modalities=("t2",))
    assert ts.dseg.name == "sub-01_space-T2w_dseg.nii.gz"
    mimics = read_mimics(ts.lesions_tsv)
    np.testing.assert_allclose(mimics["calcification"][0], world(LESIONS["d2"]["ijk"]))
    assert json.loads((annot / "sub-01" / "anat" / "sub-01_space-T2w_dseg.json").read_text())["Rater"] == "alice"


def test_export_errors_are_one_line(output, tmp_path, capsys):
    from pipelines.cli import main

    subject = _subject(output)
    assert main(["review", str(output), "--export", str(tmp_path / "a"), "--rater", "zoe"]) == 2
    assert "rater zoe has no decisions" in capsys.readouterr().err
    _decide_all(subject)
    _decide_all(subject, rater="bob", add=False)
    assert main(["review", str(output), "--export", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "alice, bob" in err and "--rater" in err and len(err.strip().splitlines()) == 1
    (output / "dataset_description.json").write_text("{}")
    assert main(["review", str(output), "--export", str(tmp_path / "a"), "--rater", "alice"]) == 2
    assert "--bids-dir" in capsys.readouterr().err


# --------------------------------------------------------------------------------- agreement
def test_cohen_kappa_matches_a_hand_computation():
    from deepmir_tasks.review.agreement import cohen_kappa

    a = ["cmb", "cmb", "cmb", "iron", "iron", "vein", "not_lesion", "not_lesion"]
    b = ["cmb", "cmb", "iron", "iron", "iron", "vein", "vein", "not_lesion"]
    # p_o = 6/8; p_e = (3*2 + 2*3 + 1*2 + 2*1) / 64 = 16/64
    assert cohen_kappa(a, b) == pytest.approx((0.75 - 0.25) / 0.75)
    assert cohen_kappa(["cmb"] * 3, ["cmb"] * 3) != cohen_kappa(["cmb"] * 3, ["cmb"] * 3)  # NaN: undefined
    assert cohen_kappa([], []) != cohen_kappa([], [])


def test_two_raters_agreement_on_a_hand_made_case(output, tmp_path):
    from deepmir_tasks.review.agreement import summarise

    subject = _subject(output)
    _decide_all(subject, "alice")  # k1 iron, k2 iron, k3 no, d1 cmb, d2 calc, + missed (cmb)
    _decide_all(subject, "bob", {"k1": "cmb", "k2": "iron", "k3": "not_lesion", "d1": "cmb", "d2": "vein"}, add=False)
    save_decision(subject, "bob", None, "cmb", ijk=(21, 31, 14))  # the same missed lesion, 1.4 mm away
    save_decision(subject, "bob", None, "cmb", ijk=(8, 20, 15))   # one alice did not mark
    table = summarise([read_decisions(subject)], "alice", "bob")
    assert list(table["participant_id"]) == ["sub-01", "all"]
    row = table.iloc[0]
    # matched candidates: k1..d2 and the added pair: alice (iron, iron, no, cmb, calc, cmb),
    # bob (cmb, iron, no, cmb, vein, cmb): p_o = 4/6
    assert row["n_candidates"] == 6 and row["observed_agreement"] == pytest.approx(4 / 6)
    # marginals alice: cmb 2, iron 2, no 1, calc 1; bob: cmb 3, iron 1, no 1, vein 1
    p_e = (2 * 3 + 2 * 1 + 1 * 1) / 36
    assert row["kappa"] == pytest.approx((4 / 6 - p_e) / (1 - p_e))
    # lesion or not: alice (Y Y N Y N Y), bob (Y Y N Y N Y): perfect
    assert row["kappa_lesion"] == pytest.approx(1.0)
    # lesions: alice k1 iron, k2 iron, d1 cmb, a1 cmb (4); bob k1 cmb, k2 iron, d1 cmb, a1 cmb, a2 cmb (5);
    # same-class matches: k2, d1, a1 = 3
    assert (row["n_lesions_a"], row["n_lesions_b"], row["n_lesions_matched"]) == (4, 5, 3)
    assert row["sensitivity_a"] == pytest.approx(3 / 5) and row["sensitivity_b"] == pytest.approx(3 / 4)
    assert table.iloc[1]["kappa"] == pytest.approx(row["kappa"])


@pytest.mark.slow  # ANTs resampling onto the raw grid
def test_export_with_two_raters_prints_and_writes_agreement(output, tmp_path, capsys):
    from pipelines.cli import main

    subject = _subject(output)
    _decide_all(subject, "alice")
    _decide_all(subject, "bob", add=False)
    annot = tmp_path / "annot"
    assert main(["review", str(output), "--export", str(annot), "--rater", "alice"]) == 0
    printed = capsys.readouterr().out
    assert "kappa" in printed and "bob" in printed
    agree = pd.read_csv(annot / "review_agreement.tsv", sep="\t")
    assert list(agree["participant_id"]) == ["sub-01", "all"]
    assert agree.loc[0, "kappa"] == pytest.approx(1.0)  # same decisions on the model's candidates
    assert agree.loc[0, "sensitivity_b"] == pytest.approx(3 / 4)  # bob missed alice's added lesion


# --------------------------------------------------------------------------------- fine-tuning
def test_train_init_starts_from_the_models_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import workflows.train as tr
    from deepmir_tasks.model.train import TrainConfig
    from helpers.model import identity_prepare, write_synthetic_bids

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    bids, ann = write_synthetic_bids(tmp_path / "bids", [41, 42], shape=(24, 24, 16))
    init = tiny_model(tmp_path / "init.safetensors")
    config = TrainConfig(levels=3, base=8, patch=16, batch=1, steps=2, folds=1, validate_every=2, seed=1)
    # stopped before the first step: the exported weights are the initial model's, exactly (its
    # BatchNorm statistics are recomputed on the training subjects, as at every export)
    res = tr.train(bids, ann, tmp_path / "ft.safetensors", config, init=init, stop_at=0, progress=False,
                   threads=1, device="cpu")
    a, b = load_file(str(init)), load_file(str(res["model"]))
    learnt = [k for k in a if not any(t in k for t in ("running_mean", "running_var", "num_batches_tracked"))]
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in learnt)
    rec = json.loads(res["record"].read_text())
    assert rec["training"]["init"]["sha256"] == json.loads(init.with_suffix(".json").read_text())["weights_sha256"]
    assert rec["architecture"]["max_width"] == 32  # taken from the model, not the default
    fresh = tr.train(bids, ann, tmp_path / "fresh.safetensors", config, stop_at=0, progress=False, threads=1,
                     device="cpu")
    c = load_file(str(fresh["model"]))
    assert not all(np.array_equal(a[k].numpy(), c[k].numpy()) for k in a if "weight" in k)


def test_train_init_with_another_architecture_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from helpers.model import identity_prepare, write_synthetic_bids
    from pipelines.cli import main

    monkeypatch.setattr("workflows.train.prepare_subject", identity_prepare)
    bids, ann = write_synthetic_bids(tmp_path / "bids", [43, 44], shape=(24, 24, 16))
    init = tiny_model(tmp_path / "init.safetensors", modalities=("t2", "swi"))
    base = ["train", str(bids), "--annotations", str(ann), "--out", str(tmp_path / "m.safetensors"),
            "--init", str(init), "--base", "8", "--patch", "16", "--folds", "1", "--steps", "1",
            "--no-progress", "--device", "cpu", "--threads", "1"]
    assert main(base + ["--levels", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "init.safetensors" in err
    assert "levels 3 (asked: 4)" in err and "modalities ['t2', 'swi']" in err and "in_channels 2" in err
    assert main(base + ["--levels", "3", "--modalities", "t2", "swi"]) == 0  # the same: it trains


# --------------------------------------------------------------------------------- the server
def test_server_answers_pages_pictures_and_refuses_foreign_posts(output):
    import threading
    import urllib.error
    import urllib.request

    from deepmir_tasks.review.server import make_server

    server = make_server(find_review_subjects(output), "alice", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"

    def post(path, body, **headers):
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        page = urllib.request.urlopen(base + "/s/sub-01").read().decode()
        assert "<script" in page and "http://" not in page.replace(base, "")  # self-contained: nothing fetched elsewhere
        for path in ("/s/sub-01/crop.png?ijk=12,12,10&contour=1", "/s/sub-01/slice/qsm/10.png"):
            assert urllib.request.urlopen(base + path).read()[:8] == b"\x89PNG\r\n\x1a\n"
        assert post("/api/sub-01/decision", {"candidate_id": "k1", "decision": "cmb"},
                    Origin="http://evil.example")[0] == 403
        status, out = post("/api/sub-01/decision", {"candidate_id": "k1", "decision": "maybe"})
        assert status == 400 and "unknown decision" in out["error"]
        assert post("/api/sub-02/decision", {"candidate_id": "k1", "decision": "cmb"})[0] == 404
        status, out = post("/api/sub-01/add", {"ras": [20, 30, 14], "decision": "iron"}, Origin=base)
        assert status == 200 and out["candidate"]["id"] == "a1" and out["candidate"]["ijk"] == [20, 30, 14]
        assert rater_decisions(read_decisions(_subject(output)), "alice")["a1"]["decision"] == "iron"
        with pytest.raises(InputError, match="port .* is in use"):
            make_server(find_review_subjects(output), "alice", port=server.server_port)
    finally:
        server.shutdown()
        server.server_close()


def test_a_rerun_that_changes_the_tables_is_flagged(output):
    from deepmir_tasks.review.decisions import source_changes

    subject = _subject(output)
    save_decision(subject, "alice", "k1", "cmb")
    assert source_changes(subject) == []
    table = subject.files["lesions"]
    table.write_text(table.read_text().replace("\t0.9\t", "\t0.8\t", 1))
    assert source_changes(subject) == ["sub-01_space-T2w_desc-deepmir_lesions.tsv"]
