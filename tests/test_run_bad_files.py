"""A file that is not a readable NIfTI fails its subject alone, with its name (issue 15)."""

from __future__ import annotations

from deepmir_tasks.bids_files import find_subjects
from pipelines.run import _unreadable_reason, run_cohort


def test_text_and_empty_files_fail_their_subject_with_one_line_naming_the_file(copy_cohort, tmp_path):
    qsm = copy_cohort / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"
    qsm.write_text("hello")
    t2 = copy_cohort / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    t2.write_bytes(b"")
    result = run_cohort(copy_cohort, tmp_path / "out", worker="debug", cache_dir=tmp_path / "cache",
                        group=False)
    reasons = result.failed
    assert set(reasons) == {"sub-01", "sub-02"}
    assert reasons["sub-01"].startswith(f"{qsm}: not a readable gzipped NIfTI image")
    assert reasons["sub-02"] == f"{t2}: file is empty (0 bytes)"
    assert all("\n" not in r for r in reasons.values())


def test_valid_files_are_readable(small_cohort):
    assert [_unreadable_reason(s) for s in find_subjects(small_cohort)] == [None, None]
