"""SLURM helpers that need no cluster: label checks, sbatch argument parsing, the array scripts.

The generated array script is run here with plain ``bash`` (its ``#SBATCH`` lines are comments),
with ``SLURM_ARRAY_TASK_ID`` set by hand and a stand-in command that prints its argv, so what
each array task would execute is checked exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepmir_tasks.io import InputError
from pipelines.sbatch import option_value, parse_sbatch_args
from pipelines.slurm import DeepmirSlurmWorker, _last_error_line, _scontrol_record, slurm_worker
from pipelines.slurm_array import array_script_text, submit_cohort_array, validate_labels

ARGV_DUMP = "import json, sys; print(json.dumps(sys.argv[1:]))"


# --- labels ---------------------------------------------------------------------------------

def test_labels_strip_prefix_and_drop_duplicates():
    assert validate_labels(["sub-01", "02", "01", "A3b"]) == ["01", "02", "A3b"]


@pytest.mark.parametrize("bad", [
    "01;rm -rf ~", "$(id)", "`id`", "a b", "01'", '01"', "0-1", "0_1", "", "sub-", "01\n02", "x*",
    "../01", "é1",
])
def test_labels_with_shell_metacharacters_are_refused(bad):
    with pytest.raises(InputError, match="invalid participant label"):
        validate_labels(["01", bad])


def test_no_labels_is_an_error():
    with pytest.raises(InputError, match="no participants"):
        validate_labels([])


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=12))
def test_labels_accepted_iff_ascii_alphanumeric(label):
    bare = label[4:] if label.startswith("sub-") else label
    if bare and all(c.isascii() and c.isalnum() for c in bare):
        assert validate_labels([label]) == [bare]
    else:
        with pytest.raises(InputError):
            validate_labels([label])


# --- sbatch arguments -----------------------------------------------------------------------

def test_sbatch_args_split_like_a_shell_without_running_one():
    args = parse_sbatch_args("-p main --comment='two words; $(id)' -t 5")
    assert args == ["-p", "main", "--comment=two words; $(id)", "-t", "5"]


@pytest.mark.parametrize("bad", ["--wrap 'echo hi'", "--array=1-3", "-a 1-3", "-a1-3", "--array 0-9"])
def test_worker_refuses_options_it_sets_itself(bad):
    with pytest.raises(ValueError, match="set by DEEPMIR"):
        DeepmirSlurmWorker(sbatch_args=bad)
    with pytest.raises(InputError, match="--sbatch-args"):
        slurm_worker(sbatch_args=bad)


def test_worker_accepts_error_option_and_similar_long_names():
    for ok in ("-e /tmp/e-%j.txt", "--error=/tmp/e.txt", "--account=lab -A lab", "--export=ALL"):
        assert DeepmirSlurmWorker(sbatch_args=ok).sbatch_args == ok


@pytest.mark.parametrize("args, expected", [
    (["-e", "a.txt"], "a.txt"), (["-eb.txt"], "b.txt"), (["--error=c.txt"], "c.txt"),
    (["--error", "d.txt"], "d.txt"), (["--export=ALL", "-p", "x"], None), (["-e", "a", "--error=z"], "z"),
])
def test_option_value(args, expected):
    assert option_value(args, "-e", "--error") == expected


def test_worker_is_passed_by_class_or_object_and_named():
    assert DeepmirSlurmWorker.plugin_name() == "deepmir-slurm"
    w = slurm_worker("-p main", poll_delay=0.2)
    assert isinstance(w, DeepmirSlurmWorker) and w.poll_delay == 0.2 and w.is_async


def test_submitter_accepts_the_worker_class_with_its_arguments(tmp_path):
    from pydra.engine.submitter import Submitter

    with Submitter(worker=DeepmirSlurmWorker, sbatch_args="-p main", cache_root=tmp_path) as sub:
        assert isinstance(sub.worker, DeepmirSlurmWorker) and sub.worker.sbatch_args == "-p main"
    with pytest.raises(ValueError, match="No worker matches"):  # pydra looks names up in its own package
        Submitter(worker="deepmir-slurm", cache_root=tmp_path)


def test_worker_pickles_without_its_event_loop():
    """Jobs are pickled with their submitter and worker; the event loop must not be."""
    import asyncio

    import cloudpickle

    w = slurm_worker("-p main")
    w.loop = asyncio.new_event_loop()
    try:
        copy = cloudpickle.loads(cloudpickle.dumps(w))
    finally:
        w.loop.close()
    assert copy.sbatch_args == "-p main" and copy.loop is None


def test_scontrol_record_parsing():
    line = ("JobId=7 JobName=a.b JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 "
            "Command=/x/batch.sh WorkDir=/x StdErr=/x/slurm-7.err StdIn=/dev/null StdOut=/x/o.out Power= \n")
    assert _scontrol_record(line) == {"state": "FAILED", "exit_code": "1:0", "stderr": "/x/slurm-7.err"}


def test_last_error_line_of_a_chained_traceback():
    tb = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    raise KeyError(1)\n"
          "KeyError: 1\n\nDuring handling of the above exception, another exception occurred:\n\n"
          "Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n"
          "pkg.mod.SubjectError: sub-03 has no QSM\n")
    assert _last_error_line(tb) == "pkg.mod.SubjectError: sub-03 has no QSM"


# --- array scripts --------------------------------------------------------------------------

@pytest.fixture
def odd_paths(tmp_path):
    """BIDS/output/cache folders whose names a shell would mangle if they were not quoted."""
    root = tmp_path / "my study $HOME 'x'"
    bids = root / "bids; echo owned"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    return bids, root / "out (v1)", root / "cache `id`"


def _run_array_task(script: Path, task_id: int, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environ.update({"SLURM_ARRAY_TASK_ID": str(task_id)}, **env)
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=environ, timeout=60)


def test_array_script_gives_each_task_its_own_labels(odd_paths):
    bids, out_dir, cache = odd_paths
    labels = ["01", "02", "03", "04", "05"]
    out = submit_cohort_array(bids, out_dir, labels, cache_dir=cache, chunk_size=2, dry_run=True,
                              extra_run_args=["--threshold", "0.4"],
                              run_command=[sys.executable, "-c", ARGV_DUMP])
    assert out["n_tasks"] == 3 and out["array_job_id"] is None and out["group_job_id"] is None
    assert out["participants_file"].read_text() == "01 02\n03 04\n05\n"
    assert "#SBATCH --array=0-2" in out["array_script"].read_text()
    seen = []
    for task in range(3):
        proc = _run_array_task(out["array_script"], task, SLURM_CPUS_PER_TASK="3")
        assert proc.returncode == 0, proc.stderr
        argv = json.loads(proc.stdout.strip().splitlines()[-1])
        i = argv.index("--participant-label")
        j = argv.index("--worker")
        seen += argv[i + 1:j]
        assert argv[:3] == [str(bids.resolve()), str(out_dir.resolve()), "participant"]
        assert argv[j:] == ["--worker", "debug", "--no-group", "--cache-dir", str(cache.resolve()), "--n-procs", "3",
                            "--threshold", "0.4"]
    assert seen == labels
    # the group job: same prefix, group level
    proc = subprocess.run(["bash", str(out["group_script"])], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [str(bids.resolve()), str(out_dir.resolve()), "group"]


def test_array_task_refuses_a_tampered_list_file(odd_paths):
    bids, out_dir, cache = odd_paths
    out = submit_cohort_array(bids, out_dir, ["01", "02"], cache_dir=cache, dry_run=True,
                              run_command=[sys.executable, "-c", ARGV_DUMP])
    marker = out_dir / "owned"
    out["participants_file"].write_text(f"01\n02;touch{chr(32)}{marker}\n")
    proc = _run_array_task(out["array_script"], 1)
    assert proc.returncode == 2 and "invalid participant label" in proc.stderr
    assert not marker.exists() and proc.stdout == ""
    proc = _run_array_task(out["array_script"], 5)  # past the end of the list
    assert proc.returncode == 2 and "no participant labels" in proc.stderr


def test_default_command_is_deepmir_run_from_this_interpreter(tmp_path):
    text = array_script_text([sys.executable, "-m", "pipelines.cli", "run"], tmp_path / "bids",
                             tmp_path / "out", tmp_path / "cache", tmp_path / "list.txt",
                             tmp_path / "logs", 4)
    assert f"exec {sys.executable} -m pipelines.cli run {tmp_path / 'bids'} {tmp_path / 'out'} participant" in text
    assert '--participant-label "${labels[@]}" --worker debug --no-group' in text
    assert f"--cache-dir {tmp_path / 'cache'}" in text
    assert "#SBATCH --array=0-3" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    out = submit_cohort_array(tmp_path, tmp_path / "out", ["01"], cache_dir=tmp_path / "c", dry_run=True)
    group = out["group_script"].read_text()
    assert f"exec {sys.executable} -m pipelines.cli run {tmp_path} {tmp_path / 'out'} group" in group


def test_sbatch_args_go_to_both_jobs_and_dependency_is_afterany(tmp_path):
    out = submit_cohort_array(tmp_path, tmp_path / "out", ["01", "02"], cache_dir=tmp_path / "c",
                              sbatch_args="-p main --comment='a b'", dry_run=True)
    array_cmd, group_cmd = out["commands"]
    assert array_cmd == ["sbatch", "--parsable", "-p", "main", "--comment=a b", str(out["array_script"])]
    assert group_cmd[:5] == ["sbatch", "--parsable", "-p", "main", "--comment=a b"]
    assert group_cmd[5].startswith("--dependency=afterany:") and group_cmd[-1] == str(out["group_script"])
    for bad in ("--array=0-3", "--dependency=afterok:1", "-d afterok:1", "--wrap true"):
        with pytest.raises(InputError, match="--sbatch-args"):
            submit_cohort_array(tmp_path, tmp_path / "out", ["01"], cache_dir=tmp_path / "c",
                                sbatch_args=bad, dry_run=True)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="chunk-size"):
        submit_cohort_array(tmp_path, tmp_path / "o", ["01"], cache_dir=tmp_path / "c", chunk_size=0, dry_run=True)
    with pytest.raises(InputError, match="BIDS folder does not exist"):
        submit_cohort_array(tmp_path / "nope", tmp_path / "o", ["01"], cache_dir=tmp_path / "c", dry_run=True)
    with pytest.raises(InputError, match="invalid participant label"):
        submit_cohort_array(tmp_path, tmp_path / "o", ["01", "$(reboot)"], cache_dir=tmp_path / "c")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_submit_command_dry_run_and_refusals(tmp_path, capsys):
    from pipelines.cli import main

    bids = tmp_path / "bids"
    for label in ("01", "02", "B7"):
        (bids / f"sub-{label}" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    rc = main(["submit", str(bids), str(tmp_path / "out"), "--dry-run", "--chunk-size", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "3 participant(s) in 2 array task(s)" in printed and printed.count("would run: sbatch") == 2
    assert (tmp_path / "out" / "slurm" / "participants.txt").read_text() == "01 02\nB7\n"
    script = (tmp_path / "out" / "slurm" / "participant_array.sh").read_text()
    assert f"--cache-dir {tmp_path / 'out' / 'sourcedata' / 'deepmir_cache'}" in script

    rc = main(["submit", str(bids), str(tmp_path / "o3"), "--participant-label", "sub-B7", "--dry-run",
               "--run-args=--threshold 0.3 --model '/models/my model.safetensors'"])
    assert rc == 0 and "1 participant(s) in 1 array task(s)" in capsys.readouterr().out
    script = (tmp_path / "o3" / "slurm" / "participant_array.sh").read_text()
    assert script.rstrip().endswith("--threshold 0.3 --model '/models/my model.safetensors'")
    assert main(["submit", str(bids), str(tmp_path / "o2"), "--run-args=--worker cf"]) == 2
    assert "--worker is set by deepmir submit" in capsys.readouterr().err

    assert main(["submit", str(bids), str(tmp_path / "o2"), "--participant-label", "01;id"]) == 2
    assert "invalid participant label" in capsys.readouterr().err
    assert main(["submit", str(bids), str(tmp_path / "o2"), "--participant-label", "09"]) == 2
    assert "sub-09" in capsys.readouterr().err


def test_submit_without_sbatch_says_so(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["submit", str(bids), str(tmp_path / "out")]) == 1
    assert "sbatch not found on PATH" in capsys.readouterr().err


# --- polling with stand-in scontrol/sacct (no cluster) ---------------------------------------

def _fake_tools(tmp_path, monkeypatch, scontrol: str, sacct: str | None = None):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    tools = {"scontrol": scontrol} | ({"sacct": sacct} if sacct is not None else {})
    for name, body in tools.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # only the stand-ins: no real SLURM client


@pytest.mark.parametrize("scontrol, sacct, expected", [
    ("echo 'JobId=5 JobState=RUNNING ExitCode=0:0 StdErr=/x/e.err StdIn=/dev/null'", None, False),
    ("echo 'JobId=5 JobState=COMPLETING ExitCode=0:0 StdErr=/x/e.err StdIn=/dev/null'", None, False),
    ("echo 'JobId=5 JobState=TIMEOUT ExitCode=0:15 StdErr=/x/e 5.err StdIn=/dev/null'", None,
     {"state": "TIMEOUT", "exit_code": "0:15", "stderr": "/x/e 5.err"}),
    ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", None,
     {"state": "UNKNOWN", "exit_code": "?"}),
    ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", "echo 'OUT_OF_MEMORY|0:125'",
     {"state": "OUT_OF_MEMORY", "exit_code": "0:125"}),
    ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", "echo 'RUNNING|0:0'", False),
    ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
     "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1", {"state": "UNKNOWN", "exit_code": "?"}),
])
def test_poll_reads_scontrol_then_sacct(tmp_path, monkeypatch, scontrol, sacct, expected):
    import asyncio

    _fake_tools(tmp_path, monkeypatch, scontrol, sacct)
    assert asyncio.run(slurm_worker()._poll_job("5")) == expected


def test_poll_tells_an_unreachable_controller_from_a_forgotten_job(tmp_path, monkeypatch):
    import asyncio

    from pipelines.slurm import _Unreachable

    _fake_tools(tmp_path, monkeypatch,
                "echo 'slurm_load_jobs error: Socket timed out on send/recv operation' >&2; exit 1")
    with pytest.raises(_Unreachable, match="Socket timed out"):
        asyncio.run(slurm_worker()._poll_job("5"))


def test_max_parallel_throttles_the_array(tmp_path):
    out = submit_cohort_array(tmp_path, tmp_path / "out", ["01", "02", "03"], cache_dir=tmp_path / "c",
                              max_parallel=2, dry_run=True)
    assert "#SBATCH --array=0-2%2\n" in out["array_script"].read_text()
    with pytest.raises(InputError, match="max-parallel"):
        submit_cohort_array(tmp_path, tmp_path / "out", ["01"], cache_dir=tmp_path / "c", max_parallel=0,
                            dry_run=True)


def test_array_larger_than_max_array_size_is_refused_with_a_chunk_size_that_fits(tmp_path, monkeypatch):
    from pipelines.slurm_array import max_array_size

    _fake_tools(tmp_path, monkeypatch, "echo 'AuthType                = auth/munge'; echo 'MaxArraySize            = 4'")
    assert max_array_size() == 4
    labels = [f"{i:02d}" for i in range(1, 10)]  # 9 subjects; indices 0..3 allowed -> 4 tasks at most
    with pytest.raises(InputError, match=r"9 array tasks exceed this cluster's MaxArraySize \(4\); "
                                         r"use --chunk-size 3 or more"):
        submit_cohort_array(tmp_path, tmp_path / "out", labels, cache_dir=tmp_path / "c", dry_run=True)
    with pytest.raises(InputError, match="use --chunk-size 3"):  # 2 per task would need 5 tasks
        submit_cohort_array(tmp_path, tmp_path / "out", labels, cache_dir=tmp_path / "c", chunk_size=2,
                            dry_run=True)
    out = submit_cohort_array(tmp_path, tmp_path / "out", labels[:8], cache_dir=tmp_path / "c", chunk_size=2,
                              dry_run=True)
    assert out["n_tasks"] == 4 and "#SBATCH --array=0-3\n" in out["array_script"].read_text()
