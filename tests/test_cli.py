"""The ``deepmir`` command line: help, one-line errors, exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert "usage: deepmir" in capsys.readouterr().out


def test_missing_bids_dir_is_one_line_error(tmp_path, capsys):
    code = main(["run", str(tmp_path / "nope"), str(tmp_path / "out"), "participant"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "does not exist" in err


def test_unknown_participant_is_named(small_cohort, tmp_path, capsys):
    code = main(["run", str(small_cohort), str(tmp_path / "out"), "participant", "--participant-label", "99"])
    assert code == 2
    assert "sub-99" in capsys.readouterr().err


def test_subject_without_images_fails_by_name_and_exit_status_is_nonzero(copy_cohort, tmp_path):
    """A subject needs at least one of T2w, SWI and QSM (the bundled model serves any subset)."""
    for suffix in ("T2w", "swi", "Chimap"):
        (copy_cohort / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", str(copy_cohort), str(tmp_path / "out"), "participant",
         "--participant-label", "01", "--worker", "debug"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "sub-01" in proc.stdout and "no swi image" in proc.stdout and "failed" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_group_level_on_empty_output_is_clear(tmp_path, capsys):
    code = main(["run", str(tmp_path), str(tmp_path / "missing_out"), "group"])
    assert code == 2
    assert "participant level first" in capsys.readouterr().err
