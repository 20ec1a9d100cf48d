"""DeepmirSlurmWorker and job arrays on a real SLURM cluster (``scripts/slurm/start_cluster.sh``).

The toy tasks are defined here; SLURM jobs import this module to unpickle them, so the test
folder is put on the jobs' PYTHONPATH (sbatch passes the environment on). Every call to sbatch
goes through a shim on PATH that logs it, so submissions are counted for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydra.compose import python, workflow

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None,
                       reason="sbatch not on PATH: start a cluster with scripts/slurm/start_cluster.sh"),
]


@python.define
def Square(x: int) -> int:
    return x * x


@python.define
def AddChecked(a: int, b: int) -> int:
    if a < 0:
        raise ValueError(f"negative input {a} is not allowed")
    return a + b


@python.define
def DieHard(code: int) -> int:
    sys.stderr.write("toy task: about to leave without a traceback\n")
    sys.stderr.flush()
    os._exit(code)


@workflow.define
def SquarePlus(x: int, b: int) -> int:
    sq = workflow.add(Square(x=x))
    add = workflow.add(AddChecked(a=sq.out, b=b))
    return add.out


@workflow.define
def AddTwice(x: int) -> int:
    first = workflow.add(AddChecked(a=x, b=1), name="first")
    second = workflow.add(AddChecked(a=first.out, b=1), name="second")
    return second.out


@pytest.fixture(scope="module")
def cluster():
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    states = proc.stdout.split()
    if proc.returncode or not any(s.startswith(("idle", "mixed", "allocated")) for s in states):
        pytest.fail(f"sbatch exists but the cluster does not answer (sinfo: {proc.stdout.strip()!r} "
                    f"{proc.stderr.strip()!r}); run scripts/slurm/start_cluster.sh")


@pytest.fixture
def sbatch_log(tmp_path, monkeypatch, cluster):
    """Put a logging ``sbatch`` shim first on PATH; return the log file (one line per call)."""
    real = shutil.which("sbatch")
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    log = tmp_path / "sbatch_calls.log"
    log.touch()
    (shim_dir / "sbatch").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    (shim_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    return log


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def _submitter(cache, sbatch_args=""):
    from pydra.engine.submitter import Submitter

    from pipelines.slurm import slurm_worker

    return Submitter(worker=slurm_worker(sbatch_args=sbatch_args, poll_delay=0.2), cache_root=cache)


def test_workflow_runs_under_the_worker(tmp_path, sbatch_log):
    with _submitter(tmp_path / "cache") as sub:
        res = sub(SquarePlus(x=3, b=1))
    assert not res.errored and res.outputs.out == 10
    calls = _calls(sbatch_log)
    assert len(calls) == 2 and all("--parsable" in c for c in calls)
    assert any("--job-name=Square." in c for c in calls) and any("--job-name=AddChecked." in c for c in calls)


def test_cached_tasks_are_not_submitted(tmp_path, sbatch_log):
    cache = tmp_path / "cache"
    with _submitter(cache) as sub:
        assert sub(SquarePlus(x=4, b=1)).outputs.out == 17
    assert len(_calls(sbatch_log)) == 2
    # new workflow (b changed): Square(x=4) is cached, only the addition runs
    with _submitter(cache) as sub:
        assert sub(SquarePlus(x=4, b=2)).outputs.out == 18
    calls = _calls(sbatch_log)
    assert len(calls) == 3 and "--job-name=AddChecked." in calls[-1]
    # a cached task on its own: no job at all; rerun=True does submit it again
    with _submitter(cache) as sub:
        assert sub(Square(x=4)).outputs.out == 16
        assert len(_calls(sbatch_log)) == 3
        assert sub(Square(x=4), rerun=True).outputs.out == 16
    assert len(_calls(sbatch_log)) == 4


def test_failing_task_gives_its_real_error(tmp_path, sbatch_log):
    with _submitter(tmp_path / "cache") as sub:
        with pytest.raises(Exception) as info:
            sub(AddChecked(a=-1, b=2), raise_errors=True)
    text = str(info.value)
    assert re.search(r"AddChecked \(SLURM job \d+, FAILED, exit code 1:0\) failed: "
                     r"ValueError: negative input -1 is not allowed", text), text
    assert "unknown reason" not in text and "Job information not found" not in text

    with _submitter(tmp_path / "cache") as sub:
        with pytest.raises(RuntimeError) as info:
            sub(AddTwice(x=-5), raise_errors=True)
    text = str(info.value)
    assert "ValueError: negative input -5 is not allowed" in text
    assert len(_calls(sbatch_log)) == 2  # the second step was never submitted


def test_job_killed_without_traceback_reports_state_and_stderr(tmp_path, sbatch_log):
    """A job that dies outside Python's reach: SLURM state, exit code and stderr tail (from a
    user ``-e`` pattern), and no stale pydra lock left behind."""
    err_pattern = tmp_path / "errors" / "job-%j.txt"
    err_pattern.parent.mkdir()
    task = DieHard(code=3)
    with _submitter(tmp_path / "cache", sbatch_args=f"-e '{err_pattern}' --job-name=diehard") as sub:
        with pytest.raises(Exception) as info:
            sub(task, raise_errors=True)
    text = str(info.value)
    m = re.search(r"SLURM job (\d+), FAILED, exit code 3:0\) ended without a result; stderr \((\S+)\)", text)
    assert m, text
    assert m.group(2) == str(err_pattern).replace("%j", m.group(1))
    assert "toy task: about to leave without a traceback" in text
    assert "--job-name=diehard" in _calls(sbatch_log)[0]
    lock = tmp_path / "cache" / f"{task._checksum}.lock"
    assert not lock.exists()


def test_sbatch_refusal_is_reported(tmp_path, sbatch_log):
    with _submitter(tmp_path / "cache", sbatch_args="-p no_such_partition") as sub:
        with pytest.raises(Exception, match=r"sbatch failed for Square \(exit 1\): .*partition"):
            sub(Square(x=2), raise_errors=True)
    assert len(_calls(sbatch_log)) == 1


def _wait_for(job_id: str, timeout: float = 120.0) -> str:
    """Poll ``scontrol`` until the job reaches a final state; return it."""
    from pipelines.slurm import FINAL_STATES, _scontrol_record

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
        states = {_scontrol_record(line)["state"] for line in out.splitlines() if line.strip()}
        if states and states <= FINAL_STATES:
            return ",".join(sorted(states))
        time.sleep(0.3)
    raise TimeoutError(f"SLURM job {job_id} still running after {timeout} s")


TOY_RUN = r"""
import json, os, sys, time
bids, out, level = sys.argv[1:4]
os.makedirs(os.path.join(out, "done"), exist_ok=True)
if level == "participant":
    rest = sys.argv[4:]
    labels = rest[rest.index("--participant-label") + 1:rest.index("--worker")]
    for label in labels:
        with open(os.path.join(out, "done", label + ".json"), "w") as fp:
            json.dump({"task": os.environ["SLURM_ARRAY_TASK_ID"], "argv": rest, "t": time.time()}, fp)
else:
    done = sorted(f[:-5] for f in os.listdir(os.path.join(out, "done")))
    with open(os.path.join(out, "group.json"), "w") as fp:
        json.dump({"labels": done, "t": time.time(), "bids": bids}, fp)
"""


def test_array_runs_every_task_then_the_group_job(tmp_path, sbatch_log):
    import json

    from pipelines.slurm_array import submit_cohort_array

    bids = tmp_path / "bids dir"
    bids.mkdir()
    toy = tmp_path / "toy_run.py"
    toy.write_text(TOY_RUN)
    labels = ["01", "02", "03", "04", "05"]
    out_dir = tmp_path / "out"
    res = submit_cohort_array(bids, out_dir, labels, cache_dir=tmp_path / "cache", chunk_size=2,
                              sbatch_args="-t 5", run_command=[sys.executable, str(toy)])
    assert res["array_job_id"] and res["group_job_id"] and res["n_tasks"] == 3
    assert len(_calls(sbatch_log)) == 2  # one sbatch for the whole array, one for the group job
    assert f"--dependency=afterany:{res['array_job_id']}" in _calls(sbatch_log)[1]
    assert _wait_for(res["group_job_id"]) == "COMPLETED"
    assert _wait_for(res["array_job_id"]) == "COMPLETED"

    done = {p.stem: json.loads(p.read_text()) for p in (out_dir / "done").glob("*.json")}
    assert sorted(done) == labels
    assert [done[label]["task"] for label in labels] == ["0", "0", "1", "1", "2"]
    assert all(d["argv"][-4:-2] == ["--cache-dir", str((tmp_path / "cache").resolve())] for d in done.values())
    group = json.loads((out_dir / "group.json").read_text())
    assert group["labels"] == labels and group["bids"] == str(bids.resolve())
    assert group["t"] >= max(d["t"] for d in done.values())
    logs = sorted(p.name for p in (out_dir / "slurm" / "logs").iterdir())
    assert len([n for n in logs if n.startswith("participant_")]) == 3 and any(n.startswith("group_") for n in logs)


def test_array_refuses_labels_with_shell_metacharacters(tmp_path, sbatch_log):
    from deepmir_tasks.io import InputError
    from pipelines.slurm_array import submit_cohort_array

    with pytest.raises(InputError, match="invalid participant label"):
        submit_cohort_array(tmp_path, tmp_path / "out", ["01", "02; scancel -u root"],
                            cache_dir=tmp_path / "cache")
    assert _calls(sbatch_log) == [] and not (tmp_path / "out").exists()


def test_start_script_is_idempotent(cluster):
    """A second start with the cluster running does nothing: same daemons, same PIDs."""
    state = Path(os.environ.get("DEEPMIR_SLURM_STATE", "/tmp/deepmir-slurm"))
    pid_files = {name: state / f"{name}.pid" for name in ("munged", "slurmctld", "slurmd")}
    if not all(f.exists() for f in pid_files.values()):
        pytest.skip(f"this cluster was not started by scripts/slurm/start_cluster.sh (no PIDs in {state})")
    before = {name: f.read_text().strip() for name, f in pid_files.items()}
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "start_cluster.sh"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stderr and time.monotonic() - t0 < 5
    assert {name: f.read_text().strip() for name, f in pid_files.items()} == before
    for name, pid in before.items():
        assert Path(f"/proc/{pid}/comm").read_text().strip() == name
