"""A task's cache key is the same in every process, and changes when the code it runs changes."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
import types
import typing as ty
from pathlib import Path

import cloudpickle
import nibabel as nib
import numpy as np
import pytest
from fileformats.core import FileSet
from pydra.compose.base import Task
from pydra.utils.general import get_fields

import deepmir_tasks
from deepmir_tasks.codehash import FIRST_PARTY, module_closure, module_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def project_task_classes() -> list[type[Task]]:
    """Every Pydra task class (python tasks and workflows) that DEEPMIR's packages define."""
    found: dict[int, type[Task]] = {}
    for top in FIRST_PARTY:
        pkg = importlib.import_module(top)
        names = [top] + [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{top}.")]
        for name in names:
            mod = importlib.import_module(name)
            for obj in vars(mod).values():
                # workflow classes are made by pydra, in a module it calls "types"
                if (inspect.isclass(obj) and issubclass(obj, Task) and obj.__module__ in (name, "types")
                        and not obj.__name__.endswith("Task")):
                    found[id(obj)] = obj
    return sorted(found.values(), key=lambda c: c.__name__)


def _value_for(tp, tmp: Path):
    """A valid value for an input field of type ``tp`` (files are made small but real)."""
    args = [a for a in ty.get_args(tp) if a is not type(None)]
    if args and ty.get_origin(tp) in (ty.Union, types.UnionType):
        return _value_for(args[0], tmp)
    origin = ty.get_origin(tp) or tp
    if inspect.isclass(origin) and issubclass(origin, FileSet):
        ext = getattr(origin, "ext", None) or ".dat"
        path = tmp / f"f{len(list(tmp.iterdir()))}{ext}"
        if ext.startswith(".nii"):
            nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), path)
        else:
            path.write_text("a\tb\n1\t2\n")
        return path
    if origin in (Path, os.PathLike):
        return tmp
    if origin is list:
        return []
    if origin is dict:
        return {}
    for cls, value in ((bool, True), (int, 1), (float, 0.5), (str, "x")):
        if origin is cls:
            return value
    raise TypeError(f"no test value for {tp!r}")


def make_task(cls: type[Task], tmp: Path) -> Task:
    kwargs = {}
    for field in get_fields(cls):
        if field.name in ("function", "constructor") or field.mandatory is False:
            continue
        kwargs[field.name] = _value_for(field.type, tmp)
    return cls(**kwargs)


CHILD = textwrap.dedent("""
    import json, sys, cloudpickle
    tasks = cloudpickle.loads(sys.stdin.buffer.read())
    print(json.dumps([t._checksum for t in tasks]))
""")


def test_every_task_class_is_found():
    names = {c.__name__ for c in project_task_classes()}
    assert {"CheckInputs", "SegmentLesions", "ExtractLesions", "RenderSubjectReport",
            "SubjectPipeline", "PreprocessSubject"} <= names


def test_checksums_survive_a_cloudpickle_round_trip_into_a_fresh_process(tmp_path):
    """What the cf and slurm workers do: pickle the task, unpickle it in another interpreter.

    The fresh interpreter imports nothing but cloudpickle first, as a worker would.
    """
    classes = project_task_classes()
    tasks = [make_task(c, tmp_path) for c in classes]
    before = [t._checksum for t in tasks]
    out = subprocess.run([sys.executable, "-c", CHILD], input=cloudpickle.dumps(tasks),
                         capture_output=True, cwd=tmp_path, check=True)
    after = json.loads(out.stdout)
    changed = [c.__name__ for c, a, b in zip(classes, before, after) if a != b]
    assert not changed, f"checksums differ after the round trip (cloudpickle " \
                        f"{cloudpickle.__version__}): {changed}"


def test_function_hash_follows_the_code_it_can_run():
    from deepmir_tasks.lesions.tasks import ExtractLesions
    from deepmir_tasks.preprocess.tasks import RegisterToT2

    lesions = module_closure("deepmir_tasks.lesions.tasks")
    assert "deepmir_tasks.lesions.extract" in lesions        # imported inside the task body
    assert "deepmir_tasks.preprocess.register" not in lesions
    assert "deepmir_tasks.preprocess.register" in module_closure("deepmir_tasks.preprocess.tasks")
    from pydra.utils.hash import hash_function
    fn = {c: next(f.default for f in get_fields(c) if f.name == "function")
          for c in (ExtractLesions, RegisterToT2)}
    assert fn[ExtractLesions].__module__ == "deepmir_tasks.lesions.tasks"
    assert hash_function(fn[ExtractLesions]) != hash_function(fn[RegisterToT2])
    assert module_fingerprint("deepmir_tasks.lesions.tasks") == \
        module_fingerprint("deepmir_tasks.lesions.tasks")


def test_code_version_is_printed_and_recorded(tmp_path):
    from deepmir_tasks.codehash import code_version

    v = code_version()
    assert v.startswith(deepmir_tasks.__version__.split("+")[0] + "+code.")
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--version"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert v in out.stdout


EDIT_RUN = textwrap.dedent("""
    import json, sys
    from deepmir_tasks.lesions.tasks import CombineTables
    from deepmir_tasks.preprocess.tasks import MakeGrid
    import deepmir_tasks
    assert deepmir_tasks.__file__.startswith(sys.argv[1]), deepmir_tasks.__file__
    data, cache = sys.argv[2], sys.argv[3]
    group = CombineTables(lesions=[f"{data}/lesions.tsv"], summaries=[f"{data}/summary.tsv"])(
        worker="cf", cache_root=cache)
    MakeGrid(t2_file=f"{data}/t2.nii.gz", voxel_size=2.0)(worker="cf", cache_root=cache)
    print(json.dumps(open(group.group_summary).read().splitlines()[0].split("\t")))
""")


@pytest.mark.slow
def test_editing_a_helper_reruns_the_task_that_calls_it_and_nothing_else(tmp_path):
    """A copy of DEEPMIR's packages, run in fresh processes under the cf worker."""
    import shutil

    src = tmp_path / "src"
    for top in FIRST_PARTY:
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("models", "__pycache__"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "lesions.tsv").write_text("participant_id\tlabel\nsub-01\tcmb\n")
    (data / "summary.tsv").write_text("participant_id\tn_cmb\nsub-01\t1\n")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), data / "t2.nii.gz")
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(src))

    def run():
        out = subprocess.run([sys.executable, "-c", EDIT_RUN, str(src), str(data), str(cache)],
                             env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        jobs = {p.name for p in cache.iterdir() if p.name.startswith("python-")}
        return json.loads(out.stdout.strip().splitlines()[-1]), jobs

    columns, jobs = run()
    assert len(jobs) == 2
    assert run() == (columns, jobs)                    # unchanged code: both served from the cache

    tables = src / "deepmir_tasks" / "lesions" / "tables.py"
    text = tables.read_text()
    assert "def write_group_tables(" in text
    tables.write_text(text.replace("def write_group_tables(", "def _write_group_tables(") + textwrap.dedent("""

        def write_group_tables(lesion_paths, summary_paths, out_dir, dropped_paths=()):
            out = _write_group_tables(lesion_paths, summary_paths, out_dir, dropped_paths)
            df = pd.read_csv(out["summary"], sep="\\t")
            df["edited"] = 1
            df.to_csv(out["summary"], sep="\\t", index=False)
            return out
    """))
    edited_columns, edited_jobs = run()
    assert edited_columns == columns + ["edited"]       # the edited helper ran ...
    assert len(edited_jobs - jobs) == 1                 # ... in a new job: CombineTables alone
    assert run() == (edited_columns, edited_jobs)       # and that is cached in its turn
