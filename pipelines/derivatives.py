"""Writing a subject's results into a BIDS-derivatives dataset.

Results are produced inside the Pydra cache; this module copies them out under their BIDS
names. Every copy goes to a temporary name first and is renamed into place, so a file under a final
name is always complete, and a copy is skipped when the destination already has the same bytes.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pandas as pd

from deepmir_tasks.bids_names import DERIVATIVE_NAMES, derivative_name
from deepmir_tasks.codehash import code_version
from deepmir_tasks.io import atomic_path, write_json, write_tsv
from deepmir_tasks.labels import CLASS_DESCRIPTIONS, DSEG_LABELS

__all__ = ["DERIVATIVE_NAMES", "DSEG_LOOKUP", "copy_atomic", "write_dataset_description", "write_subject",
           "subject_space", "write_group_tables"]

#: the lookup table of the published dseg (``desc-deepmir_dseg.tsv``)
DSEG_LOOKUP = pd.DataFrame(
    {"index": list(DSEG_LABELS.values()), "name": list(DSEG_LABELS),
     "description": [CLASS_DESCRIPTIONS[c] for c in DSEG_LABELS]}
)


def copy_atomic(src, dst) -> Path:
    """Copy ``src`` to ``dst`` through a temporary name; skip when ``dst`` is already identical."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return dst
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def write_dataset_description(output_dir, *, model_file, model_sha256: str, parameters: dict,
                              source_dataset: str | None = None, subset_models=()) -> Path:
    """``dataset_description.json`` of the derivatives dataset, plus the dseg lookup table.
    ``subset_models``: the bundled models some subjects ran with instead of ``model_file``, made
    for exactly their modalities (each subject's lesion JSON names its model)."""
    from deepmir_tasks.model.modelfile import load_record, sha256_file

    output_dir = Path(output_dir)
    desc = {
        "Name": "DEEPMIR: cerebral microbleeds and iron deposits",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "deepmir",
            "Version": code_version(),
            "CodeURL": "https://github.com/deepmir/deepmir",
            "Model": {"File": Path(model_file).name, "SHA256": model_sha256},
            "Parameters": parameters,
        }],
    }
    if subset_models:
        desc["GeneratedBy"][0]["SubsetModels"] = [
            {"File": Path(p).name, "SHA256": sha256_file(p), "Modalities": load_record(p)["modalities"]}
            for p in subset_models]
    if source_dataset:
        desc["SourceDatasets"] = [{"URL": str(source_dataset)}]
    write_json(desc, output_dir / "dataset_description.json")
    write_tsv(DSEG_LOOKUP, output_dir / "desc-deepmir_dseg.tsv")
    return output_dir / "dataset_description.json"


def write_subject(outputs: dict, output_dir, subject) -> dict[str, Path]:
    """Copy one subject's workflow outputs under their BIDS-derivatives names.

    ``outputs`` maps workflow output names to files (missing/None entries are skipped);
    ``subject`` is a :class:`deepmir_tasks.bids_files.SubjectInputs`. The names carry the
    subject's reference space (``space-T2w``, ``space-swi``, ``space-Chimap``), which its
    preprocessing report records. Returns the written paths by name.
    """
    output_dir = Path(output_dir)
    anat = output_dir / subject.anat_dir_rel
    space = subject_space(outputs.get("preproc_report"))
    written = {}
    for name in DERIVATIVE_NAMES:
        src = outputs.get(name)
        if src is None:
            continue
        written[name] = copy_atomic(src, anat / derivative_name(name, subject.key, space))
    if outputs.get("report") is not None:
        written["report"] = copy_atomic(outputs["report"], output_dir / f"{subject.key}.html")
    return written


def subject_space(preproc_report) -> str:
    """The ``space-`` label a subject's derivatives carry: the preprocessing report's ``space``
    (``T2w`` for a report without one, or without a report)."""
    import json

    if preproc_report is None:
        return "T2w"
    return json.loads(Path(preproc_report).read_text()).get("space", "T2w")


def write_group_tables(output_dir, subjects_written: list[dict]) -> dict[str, Path]:
    """``group/lesions.tsv``, ``group/summary.tsv`` and ``group/dropped.tsv`` from subject tables."""
    from deepmir_tasks.lesions.tables import write_group_tables as write_tables

    def paths(name):
        return [w[name] for w in subjects_written if w.get(name)]

    return write_tables(paths("lesions"), paths("summary"), output_dir, dropped_paths=paths("dropped"))
