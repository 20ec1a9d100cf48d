"""A subject with T2w + SWI and no QSM (issue 13): run with a model that serves the subset, refused
with one line by a model that needs all three; the results say what evidence they had."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from deepmir_tasks.model.modelfile import save_model
from deepmir_tasks.model.unet import UNet
from helpers.model import TINY_RECORD
from pipelines.run import run_cohort

pytestmark = pytest.mark.slow


def _small_model(path, dropout: float):
    """A small network whose record says it was trained with ``dropout`` modality dropout (its
    weights are random: this checks the path through the pipeline, not detection)."""
    torch.manual_seed(0)
    rec = json.loads(json.dumps(TINY_RECORD))
    rec["training"] = {"config": {"modality_dropout": dropout}}
    net = UNet(**{k: v for k, v in rec["architecture"].items() if k != "name"}).eval()
    save_model(net, path, rec)
    return path


def test_t2w_and_swi_subject_runs_flagged_with_a_subset_model_and_is_refused_otherwise(copy_cohort, tmp_path):
    qsm = copy_cohort / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"
    qsm.unlink()
    refused = run_cohort(copy_cohort, tmp_path / "refused", participant_labels=["01"], worker="debug",
                         cache_dir=tmp_path / "cache", allow_resolution=True, group=False,
                         model=_small_model(tmp_path / "all_three.safetensors", 0.0))
    reason = refused.failed["sub-01"]
    assert reason.startswith("no Chimap image") and "modality dropout" in reason and "\n" not in reason

    model = _small_model(tmp_path / "subset.safetensors", 0.3)
    out = tmp_path / "out"
    result = run_cohort(copy_cohort, out, participant_labels=["01"], worker="debug", cache_dir=tmp_path / "cache",
                        allow_resolution=True, model=model)
    assert result.ok, result.failed
    files = result.subjects[0].files
    assert "qsm" not in files and files["swi"].exists()          # no preprocessed Chimap is published
    summary = pd.read_csv(files["summary"], sep="\t")
    assert summary["flags"].tolist() == ["no_qsm;outside_supported_resolution"]
    html = files["report"].read_text()
    assert "No QSM: this subject ran on T2w + SWI" in html
    report = json.loads(files["preproc_report"].read_text())
    assert report["qsm_transform"] == "no QSM" and "qsm" not in report["coverage"]
