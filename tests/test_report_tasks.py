"""The report's Pydra tasks, and the subject page on tables written by deepmir_tasks.lesions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from deepmir_tasks import __version__
from deepmir_tasks.report import render_subject_report
from deepmir_tasks.report.tasks import RenderCohortReport, RenderSubjectReport
from helpers.report import make_phantom, parse_page


def _count(text, cls):
    return sum(cls in e.classes for e in parse_page(text))


def test_render_subject_report_task(tmp_path):
    p = make_phantom(tmp_path / "in", n_cmb=3, n_iron=2, n_dropped=1, shape=(48, 48, 32))
    task = RenderSubjectReport(participant_id="01", session_id="ses-A", t2=p["t2"], swi=p["swi"],
                               qsm=p["qsm"], mask=p["mask"], dseg=p["dseg"], lesions_tsv=p["lesions_tsv"],
                               dropped_tsv=p["dropped_tsv"], provenance={"model": "test"})
    assert task.version == __version__
    out = task(cache_root=tmp_path / "cache", worker="debug")
    path = out.report.fspath
    assert path.name == "sub-01_ses-A.html"
    text = path.read_text()
    assert _count(text, "lesion-tile") == len(p["lesions"]) == 5
    assert _count(text, "dropped-tile") == 1
    # a second run with the same inputs is served from the cache
    again = task(cache_root=tmp_path / "cache", worker="debug")
    assert again.report.fspath == path


def test_render_cohort_report_task(tmp_path):
    group = tmp_path / "group.tsv"
    pd.DataFrame({"participant_id": ["sub-01", "sub-01"], "lesion_id": [1, 2], "label": ["cmb", "iron"],
                  "volume_mm3": [4.0, 9.0], "qsm_mean_ppm": [0.3, 0.1], "region": ["deep", "lobar"]}
                 ).to_csv(group, sep="\t", index=False)
    subjects = [{"participant_id": "sub-01", "status": "done", "n_cmb": 1, "n_iron": 1,
                 "iron_volume_mm3": 9.0, "report": "sub-01/sub-01.html"},
                {"participant_id": "sub-02", "status": "failed", "reason": "no SWI", "report": None}]
    out = RenderCohortReport(subjects=subjects, group_lesions_tsv=group)(cache_root=tmp_path / "cache")
    text = out.report.fspath.read_text()
    assert out.report.fspath.name == "report.html"
    assert text.index("sub-02") < text.index("sub-01")
    assert 'href="sub-01/sub-01.html"' in text


def test_subject_page_from_extracted_lesion_tables(tmp_path):
    """Tables written by deepmir_tasks.lesions (the real producer) render one tile per row."""
    from deepmir_tasks.lesions.extract import extract_lesions_files

    p = make_phantom(tmp_path / "in", n_cmb=4, n_iron=3, n_dropped=2, shape=(56, 56, 36), seed=4)
    img = nib.load(str(p["dseg"]))
    dseg = np.asarray(img.dataobj).astype(np.uint8)
    qsm = np.asarray(nib.load(str(p["qsm"])).dataobj)
    dseg[(qsm < -0.1) & (dseg == 0)] = 1  # the calcification mimics, called CMB by the "model"
    nib.save(nib.Nifti1Image(dseg, img.affine), str(p["dseg"]))
    probs = {}
    for lab, name in ((1, "cmb"), (2, "iron")):
        probs[name] = tmp_path / f"prob_{name}.nii.gz"
        nib.save(nib.Nifti1Image((dseg == lab).astype(np.float32) * 0.9, img.affine), str(probs[name]))
    tables = extract_lesions_files(probs["cmb"], probs["iron"], p["dseg"], p["qsm"], p["swi"], p["mask"],
                                   tmp_path / "tables", "sub-01")
    kept = pd.read_csv(tables["lesions"], sep="\t")
    dropped = pd.read_csv(tables["dropped"], sep="\t")
    assert len(kept) >= 5 and len(dropped) >= 1
    out = render_subject_report(tmp_path / "sub-01.html", participant_id="sub-01", t2=p["t2"], swi=p["swi"],
                                qsm=p["qsm"], mask=p["mask"], dseg=p["dseg"], lesions_tsv=tables["lesions"],
                                dropped_tsv=tables["dropped"])
    text = out.read_text()
    assert _count(text, "lesion-tile") == len(kept)
    assert _count(text, "dropped-tile") == len(dropped)
    for reason in dropped["reason"].unique():
        assert str(reason) in text
