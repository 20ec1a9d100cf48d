"""Failure reasons are read back from pydra's error records as one line per subject."""

import cloudpickle as cp

from pipelines.errors import error_reason


def _record(path, text):
    path.mkdir(parents=True)
    (path / "_error.pklz").write_bytes(cp.dumps({"error message": [text]}))


def test_own_record_gives_the_input_error_message(tmp_path):
    _record(tmp_path / "workflow-a", "Traceback (most recent call last):\n  File x\n"
            "deepmir_tasks.io.InputError: /d/sub-01_T2w.nii.gz: T2w is empty (every voxel is zero)\n")
    assert error_reason(tmp_path / "workflow-a") == "/d/sub-01_T2w.nii.gz: T2w is empty (every voxel is zero)"


def test_other_errors_keep_their_type(tmp_path):
    _record(tmp_path / "workflow-a", "Traceback\nValueError: bad thing\n\nRuntimeError: Workflow job X failed\n")
    assert error_reason(tmp_path / "workflow-a") == "ValueError: bad thing"


def test_outer_split_record_is_searched_for_the_subject(tmp_path):
    text = ("RuntimeError: Workflow job Split failed with errors:\n"
            "\nJob 'SubjectPipeline(0)', SubjectPipeline(t2=NiftiGz('/b/sub-01/anat/sub-01_T2w.nii.gz')), errored:"
            "\nTraceback\nValueError: first subject's problem\n"
            "\nJob 'SubjectPipeline(1)', SubjectPipeline(t2=NiftiGz('/b/sub-02/anat/sub-02_T2w.nii.gz')), errored:"
            "\nTraceback\nKeyError: second subject's problem\n")
    _record(tmp_path / "workflow-split", text)
    reason = error_reason(tmp_path / "workflow-missing", cache_dir=tmp_path,
                           marker="/b/sub-02/anat/sub-02_T2w.nii.gz")
    assert reason == "KeyError: second subject's problem"
    assert error_reason(tmp_path / "workflow-missing") == "failed (no error record)"
