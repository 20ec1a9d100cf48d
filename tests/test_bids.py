"""BIDS discovery: subjects, sessions, missing modalities, label checks."""

import json

import pytest

from deepmir_tasks.bids_files import find_subjects
from deepmir_tasks.bids_names import check_label
from deepmir_tasks.io import InputError


def _touch(root, rel):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    for mod in ("T2w", "swi", "Chimap"):
        _touch(tmp_path, f"sub-01/anat/sub-01_{mod}.nii.gz")
    for mod in ("T2w", "swi"):
        _touch(tmp_path, f"sub-02/anat/sub-02_{mod}.nii.gz")
    for ses in ("A", "B"):
        for mod in ("T2w", "swi", "Chimap"):
            _touch(tmp_path, f"sub-03/ses-{ses}/anat/sub-03_ses-{ses}_{mod}.nii.gz")
    return tmp_path


def test_finds_subjects_sessions_and_missing(dataset):
    subs = find_subjects(dataset)
    keys = [s.key for s in subs]
    assert keys == ["sub-01", "sub-02", "sub-03_ses-A", "sub-03_ses-B"]
    by_key = {s.key: s for s in subs}
    assert by_key["sub-01"].missing == []
    assert by_key["sub-02"].missing == ["Chimap"]
    assert str(by_key["sub-03_ses-B"].anat_dir_rel) == "sub-03/ses-B/anat"


def test_selection_by_label_and_session(dataset):
    subs = find_subjects(dataset, participant_labels=["sub-03"], session_labels=["B"])
    assert [s.key for s in subs] == ["sub-03_ses-B"]


def test_unknown_participant_is_named(dataset):
    with pytest.raises(InputError, match="sub-09"):
        find_subjects(dataset, participant_labels=["09"])


def test_not_bids(tmp_path):
    with pytest.raises(InputError, match="dataset_description.json"):
        find_subjects(tmp_path)


@pytest.mark.parametrize("bad", ["01;rm -rf /", "a b", "$(x)", "sub-0_1"])
def test_labels_with_shell_characters_are_refused(bad):
    with pytest.raises(InputError):
        check_label(bad)


def test_duplicate_runs_are_refused(dataset):
    _touch(dataset, "sub-01/anat/sub-01_run-2_T2w.nii.gz")
    (subj,) = find_subjects(dataset, participant_labels=["01"])   # that subject's problem, not the dataset's
    assert subj.files["t2"] is None and any("several _T2w" in p for p in subj.problems)
