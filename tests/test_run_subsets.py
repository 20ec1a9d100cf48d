"""Subjects with a subset of T2w, SWI and QSM (issue 13): each runs end to end with a model that
serves subsets, in the space of its T2w, else SWI, else QSM, with derivative names that say so; a
model that needs all three refuses them in one line; the results say what evidence they had."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from deepmir_tasks.bids_names import derivative_name, reference_modality, space_of
from deepmir_tasks.model.modelfile import save_model
from deepmir_tasks.model.unet import UNet
from helpers.model import TINY_RECORD
from pipelines.run import run_cohort

#: subject label -> the images it keeps, and the space its derivatives are in
SUBSETS = {
    "t2swi": (("T2w", "swi"), "T2w"),
    "t2qsm": (("T2w", "Chimap"), "T2w"),
    "t2": (("T2w",), "T2w"),
    "swiqsm": (("swi", "Chimap"), "swi"),
    "swi": (("swi",), "swi"),
    "qsm": (("Chimap",), "Chimap"),
}


def _small_model(path, dropout: float):
    """A small network whose record says it was trained with ``dropout`` modality dropout (its
    weights are random: this checks the path through the pipeline, not detection)."""
    torch.manual_seed(0)
    rec = json.loads(json.dumps(TINY_RECORD))
    rec["training"] = {"config": {"modality_dropout": dropout}}
    net = UNet(**{k: v for k, v in rec["architecture"].items() if k != "name"}).eval()
    save_model(net, path, rec)
    return path


def _subset_cohort(cohort, labels):
    """Copies of ``sub-01`` under the labels of :data:`SUBSETS`, each keeping only its images."""
    for label in labels:
        keep, _ = SUBSETS[label]
        anat = cohort / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        for suffix in keep:
            shutil.copyfile(cohort / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz", anat / f"sub-{label}_{suffix}.nii.gz")
    return cohort


def test_reference_and_names_follow_the_modalities():
    assert [reference_modality(m) for m in ({"t2", "qsm"}, {"swi", "qsm"}, {"qsm"})] == ["t2", "swi", "qsm"]
    assert derivative_name("dseg", "sub-01", "swi") == "sub-01_space-swi_desc-deepmir_dseg.nii.gz"
    assert derivative_name("t2_to_mni", "sub-01", "Chimap").startswith("sub-01_from-Chimap_to-MNI152")
    assert derivative_name("qsm_to_t2", "sub-01", "swi") == "sub-01_from-Chimap_to-swi_mode-image_xfm.mat"
    assert space_of("sub-01_ses-A_space-swi_desc-deepmir_lesions.tsv") == "swi"


@pytest.mark.slow
def test_a_model_that_needs_all_three_refuses_each_subset_in_one_line(copy_cohort, tmp_path):
    _subset_cohort(copy_cohort, ["swiqsm", "t2swi"])
    refused = run_cohort(copy_cohort, tmp_path / "refused", participant_labels=["swiqsm", "t2swi"], worker="debug",
                         cache_dir=tmp_path / "cache", allow_resolution=True, group=False,
                         model=_small_model(tmp_path / "all_three.safetensors", 0.0))
    assert sorted(refused.failed) == ["sub-swiqsm", "sub-t2swi"]
    for key, missing in (("sub-swiqsm", "T2w"), ("sub-t2swi", "Chimap")):
        reason = refused.failed[key]
        assert f"no {missing} image ({key}/anat/{key}_{missing}.nii.gz)" in reason, reason
        assert "modality dropout" in reason and "\n" not in reason
    line = next(line for line in refused.summary_lines() if "sub-swiqsm" in line)
    assert "failed" in line and "no T2w image" in line


@pytest.mark.slow
def test_every_subset_runs_end_to_end_in_its_reference_space(copy_cohort, tmp_path):
    _subset_cohort(copy_cohort, SUBSETS)
    model = _small_model(tmp_path / "subset.safetensors", 0.3)
    out = tmp_path / "out"
    result = run_cohort(copy_cohort, out, participant_labels=list(SUBSETS), worker="cf", n_procs=2,
                        cache_dir=tmp_path / "cache", allow_resolution=True, model=model)
    assert result.ok, result.failed
    by_label = {s.subject.participant_id: s.files for s in result.subjects}
    for label, (keep, space) in SUBSETS.items():
        files, key = by_label[label], f"sub-{label}"
        # the names say the space; an image the subject lacks is not published
        for name in ("mask", "dseg", "probseg_cmb", "lesions", "dropped", "t2_to_mni"):
            assert files[name].name == derivative_name(name, key, space), (label, files[name].name)
        for name, suffix in (("t2", "T2w"), ("swi", "swi"), ("qsm", "Chimap")):
            assert (name in files) == (suffix in keep), (label, name)
            if name in files:
                assert files[name].name == f"{key}_space-{space}_desc-preproc_{suffix}.nii.gz"
        # a transform to the reference for each other image; none for the reference itself
        assert ("swi_to_t2" in files) == ("swi" in keep and space == "T2w"), label
        assert ("qsm_to_t2" in files) == ("Chimap" in keep and space != "Chimap"), label
        report = json.loads(files["preproc_report"].read_text())
        assert report["space"] == space and len(report["modalities"]) == len(keep), (label, report["modalities"])
        flags = pd.read_csv(files["summary"], sep="\t")["flags"].iloc[0].split(";")
        missing = {"no_t2w": "T2w", "no_swi": "swi", "no_qsm": "Chimap"}
        assert [f for f in flags if f.startswith("no_")] == [f for f, s in missing.items() if s not in keep], label
        html = files["report"].read_text()
        assert ("No SWI:" in html) == ("swi" not in keep) and ("No T2w:" in html) == ("T2w" not in keep), label
    t2qsm = json.loads(by_label["t2qsm"]["preproc_report"].read_text())
    # the simulator's QSM lies in the SWI's session, some mm from the T2w's: with no SWI it is
    # registered by its brain support to the T2w brain mask, which moves it by mm
    assert t2qsm["qsm_transform"].startswith("registered by its brain support")
    qc = t2qsm["registration_qc"]["qsm"]
    assert qc["aligned_by"] == "support" and qc["displacement_mm"] >= 1.5
    assert qc["support_dice"]["support"] >= qc["support_dice"]["header"]
    swiqsm = json.loads(by_label["swiqsm"]["preproc_report"].read_text())
    assert swiqsm["reference"] == "SWI" and swiqsm["qsm_transform"].startswith("reused the SWI transform")
    group = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype={"participant_id": str})
    assert len(group) == len(SUBSETS)

    # deepmir review takes every subset: the working grid is the reference's, a missing image is empty
    from deepmir_tasks.report._images import load_grid
    from deepmir_tasks.review.decisions import find_review_subjects, read_decisions, save_decision

    reviewed = {s.participant_id: s for s in find_review_subjects(out)}
    assert {k: s.space for k, s in reviewed.items()} == {k: v[1] for k, v in SUBSETS.items()}
    for label, s in reviewed.items():
        f = s.files
        grid = load_grid(f["t2"], f["swi"], f["qsm"], f["mask"], f["dseg"])
        assert grid.t2.shape == grid.swi.shape == grid.qsm.shape, label
    swi_only = reviewed["swiqsm"]
    row = save_decision(swi_only, "rater1", None, "cmb", ijk=(5, 6, 7))
    assert row["candidate_id"] == "a1" and read_decisions(swi_only)["decision"].tolist() == ["cmb"]

    # the command line, on the same cache: served from it, under the same names
    from pipelines.cli import main

    cli_out = tmp_path / "cli_out"
    code = main(["run", str(copy_cohort), str(cli_out), "participant", "--participant-label", "swiqsm",
                 "--worker", "debug", "--cache-dir", str(tmp_path / "cache"), "--allow-resolution",
                 "--model", str(model)])
    assert code == 0
    anat = cli_out / "sub-swiqsm" / "anat"
    assert (anat / "sub-swiqsm_space-swi_desc-deepmir_lesions.tsv").exists()
    assert (anat / "sub-swiqsm_from-Chimap_to-swi_mode-image_xfm.mat").exists()
    assert not list(anat.glob("*space-T2w*"))


@pytest.mark.slow
def test_preprocess_subject_from_python_without_a_t2w(small_cohort, tmp_path):
    """The Python API for one subject: SWI + QSM preprocessed in the SWI's space, named so."""
    from workflows.preprocess import preprocess_subject

    anat = small_cohort / "sub-01" / "anat"
    out = preprocess_subject(None, anat / "sub-01_swi.nii.gz", anat / "sub-01_Chimap.nii.gz", tmp_path / "pre",
                             allow_resolution=True)
    assert sorted(out) == ["mask", "qsm", "qsm_to_t2", "report", "swi", "t2_to_mni"]
    assert out["swi"].name == "sub-01_space-swi_desc-preproc_swi.nii.gz"
    assert out["qsm_to_t2"].name == "sub-01_from-Chimap_to-swi_mode-image_xfm.mat"
    report = json.loads(out["report"].read_text())
    assert report["reference"] == "SWI" and report["flags"].startswith("no_t2w")
    assert report["mask_source"].startswith("extract_brain (MNI prior + SWI")


@pytest.mark.slow
def test_a_subject_runs_with_the_bundled_model_made_for_its_modalities(copy_cohort, tmp_path, monkeypatch):
    from deepmir_tasks.model import choice
    from deepmir_tasks.model.modelfile import DEFAULT_MODEL

    bundled = tmp_path / "bundled"
    bundled.mkdir()
    torch.manual_seed(1)
    rec = json.loads(json.dumps(TINY_RECORD))
    rec["architecture"]["in_channels"] = 2
    rec["modalities"] = ["t2", "swi"]
    save_model(UNet(**{k: v for k, v in rec["architecture"].items() if k != "name"}).eval(),
               bundled / "deepmir_t2swi.safetensors", rec)
    monkeypatch.setattr("pipelines.run.bundled_subset_models", lambda: choice.bundled_subset_models(bundled))
    _subset_cohort(copy_cohort, ["t2swi"])
    out = tmp_path / "out"
    result = run_cohort(copy_cohort, out, participant_labels=["01", "t2swi"], worker="cf", n_procs=2,
                        cache_dir=tmp_path / "cache", allow_resolution=True, group=False)
    assert result.ok, result.failed
    status = {k: json.loads((out / "logs" / f"sub-{k}_status.json").read_text())["model"] for k in ("01", "t2swi")}
    assert status == {"01": DEFAULT_MODEL.name, "t2swi": "deepmir_t2swi.safetensors"}
    desc = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert desc["Model"]["File"] == DEFAULT_MODEL.name
    assert [(m["File"], m["Modalities"]) for m in desc["SubsetModels"]] == [("deepmir_t2swi.safetensors", ["t2", "swi"])]
    by_label = {s.subject.participant_id: s.files for s in result.subjects}
    assert "deepmir_t2swi" in by_label["t2swi"]["report"].read_text()


def test_a_model_on_two_modalities_refuses_a_subject_without_one_of_them(copy_cohort, tmp_path):
    from helpers.model import tiny_model

    _subset_cohort(copy_cohort, ["swiqsm"])
    model = tiny_model(tmp_path / "t2swi.safetensors", modalities=("t2", "swi"))
    refused = run_cohort(copy_cohort, tmp_path / "out", participant_labels=["swiqsm"], worker="debug",
                         cache_dir=tmp_path / "cache", group=False, model=model)
    reason = refused.failed["sub-swiqsm"]
    assert reason.startswith("no T2w image (sub-swiqsm/anat/sub-swiqsm_T2w.nii.gz)") and "\n" not in reason
    assert "t2swi.safetensors needs T2w + SWI" in reason and "Chimap" not in reason
