"""Bad inputs fail their subject alone, with the file and the problem in one line (issue 15)."""

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
    assert reasons["sub-01"].startswith(f"{qsm}: image file is not a readable NIfTI image")
    assert reasons["sub-02"] == f"{t2}: image file is empty (0 bytes)"
    assert all("\n" not in r for r in reasons.values())


def test_valid_files_are_readable(small_cohort):
    assert [_unreadable_reason(s) for s in find_subjects(small_cohort)] == [None, None]


def test_two_t2w_runs_fail_that_subject_alone(copy_cohort, tmp_path):
    import shutil

    anat = copy_cohort / "sub-01" / "anat"
    t2 = anat / "sub-01_T2w.nii.gz"
    shutil.copy(t2, anat / "sub-01_run-2_T2w.nii.gz")
    t2.rename(anat / "sub-01_run-1_T2w.nii.gz")
    subjects = {s.key: s for s in find_subjects(copy_cohort)}
    assert set(subjects) == {"sub-01", "sub-02"}                    # the dataset is still read
    assert subjects["sub-02"].problems == () and subjects["sub-02"].files["t2"] is not None
    (problem,) = subjects["sub-01"].problems
    assert "several _T2w images" in problem and "run-1" in problem and subjects["sub-01"].missing == []
    (copy_cohort / "sub-02" / "anat" / "sub-02_swi.nii.gz").write_bytes(b"")  # keep the run short
    result = run_cohort(copy_cohort, tmp_path / "out", worker="debug", cache_dir=tmp_path / "cache",
                        group=False)
    assert result.failed["sub-01"] == problem
    assert result.failed["sub-02"].endswith("sub-02_swi.nii.gz: image file is empty (0 bytes)")


def test_an_output_path_that_is_a_file_or_read_only_is_one_line(small_cohort, tmp_path):
    import os
    import subprocess
    import sys

    target = tmp_path / "out_file"
    target.write_text("x")
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(small_cohort), str(target), "participant"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"deepmir run: error: {target}: output path exists and is not a folder"

    from deepmir_tasks.io import InputError
    from pipelines.run import check_output_dir

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere; a read-only mount is what stops it
            import pytest

            with pytest.raises(InputError, match="cannot write to the output folder"):
                check_output_dir(ro / "deriv")
    finally:
        ro.chmod(0o700)
    import pipelines.run as run_mod

    old = run_mod.MIN_FREE_BYTES
    run_mod.MIN_FREE_BYTES = 1 << 62   # more than any disk: the free-space check must refuse
    try:
        import pytest

        with pytest.raises(InputError, match="MB free on this file system"):
            check_output_dir(tmp_path / "deriv")
    finally:
        run_mod.MIN_FREE_BYTES = old


def test_a_label_given_twice_is_one_subject(small_cohort):
    subjects = find_subjects(small_cohort, participant_labels=["01", "sub-01", "02", "01"])
    assert [s.key for s in subjects] == ["sub-01", "sub-02"]


def test_a_folder_name_that_is_not_a_bids_label_fails_alone_and_names_no_file(copy_cohort, tmp_path):
    (copy_cohort / "sub-02").rename(copy_cohort / "sub-c21;touch x")
    (copy_cohort / "sub-01" / "anat" / "sub-01_swi.nii.gz").write_bytes(b"")  # keep the run short
    result = run_cohort(copy_cohort, tmp_path / "out", worker="debug", cache_dir=tmp_path / "cache",
                        group=False)
    assert set(result.failed) == {"sub-01", "sub-c21;touch x"}
    assert "'sub-c21;touch x' is not a valid BIDS participant label" in result.failed["sub-c21;touch x"]
    assert sorted(p.name for p in (tmp_path / "out" / "logs").glob("*_status.json")) == ["sub-01_status.json"]
    assert not (tmp_path / "x").exists() and not any(";" in p.name for p in (tmp_path / "out").rglob("*"))


def test_a_qsm_in_ppb_fails_its_subject_with_the_file_named_unless_converted(copy_cohort, tmp_path):
    import json

    import nibabel as nib

    qsm = copy_cohort / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"
    img = nib.load(qsm)
    nib.save(nib.Nifti1Image(img.get_fdata() * 1000.0, img.affine, img.header), str(qsm))
    (copy_cohort / "sub-02" / "anat" / "sub-02_swi.nii.gz").write_bytes(b"")
    result = run_cohort(copy_cohort, tmp_path / "out", worker="debug", cache_dir=tmp_path / "cache",
                        group=False, allow_resolution=True)
    reason = result.failed["sub-01"]
    assert reason.startswith(f"{qsm}: QSM values look like ppb") and "--qsm-units ppb" in reason
    status = json.loads((tmp_path / "out" / "logs" / "sub-01_status.json").read_text())
    assert status["status"] == "failed" and status["reason"] == reason


def test_a_full_disk_is_one_line_with_the_path_and_the_space(small_cohort, tmp_path, monkeypatch, capsys):
    import errno

    import pipelines.commands.run as run_command
    from pipelines.cli import main

    target = tmp_path / "out" / "sub-01" / "anat" / "sub-01_space-T2w_desc-deepmir_dseg.nii.gz"

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(run_command, "run", full)
    assert main(["run", str(small_cohort), str(tmp_path / "out"), "participant"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"deepmir run: error: {target}: No space left on device (")
    assert "MB free there" in err and "GB" in err


def test_a_failing_subject_is_one_console_line_without_pydra_crash_records(small_cohort, tmp_path):
    """A check inside the graph fails (small subjects are outside the supported resolution): the
    console says so once per subject, in DEEPMIR's line, without pydra's crash-report records."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(small_cohort), str(tmp_path / "out"), "participant",
           "--worker", "debug", "--no-report", "--participant-label", "01"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    console = out.stdout + out.stderr
    assert out.returncode != 0
    assert "sub-01: failed" in console and "outside the supported range" in console
    assert "Task execution failed" not in console and "crash report" not in console
