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

from deepmir_tasks.codehash import code_version
from deepmir_tasks.io import atomic_path, write_json, write_tsv

#: workflow output name -> BIDS-derivatives file name template ({key} = sub-XX[_ses-YY])
DERIVATIVE_NAMES = {
    "t2": "{key}_space-T2w_desc-preproc_T2w.nii.gz",
    "swi": "{key}_space-T2w_desc-preproc_swi.nii.gz",
    "qsm": "{key}_space-T2w_desc-preproc_Chimap.nii.gz",
    "mask": "{key}_space-T2w_desc-brain_mask.nii.gz",
    "dseg": "{key}_space-T2w_desc-deepmir_dseg.nii.gz",
    "probseg_cmb": "{key}_space-T2w_label-CMB_probseg.nii.gz",
    "probseg_iron": "{key}_space-T2w_label-iron_probseg.nii.gz",
    "lesions": "{key}_space-T2w_desc-deepmir_lesions.tsv",
    "lesions_json": "{key}_space-T2w_desc-deepmir_lesions.json",
    "dropped": "{key}_space-T2w_desc-dropped_lesions.tsv",
    "summary": "{key}_desc-deepmir_summary.tsv",
    "swi_to_t2": "{key}_from-swi_to-T2w_mode-image_xfm.mat",
    "t2_to_mni": "{key}_from-T2w_to-MNI152NLin2009aAsym_mode-image_xfm.txt",
    "preproc_report": "{key}_desc-preproc_qc.json",
}

DSEG_LOOKUP = pd.DataFrame(
    {"index": [0, 1, 2], "name": ["background", "cmb", "iron"],
     "description": ["no lesion", "cerebral microbleed", "non-haemorrhagic iron deposit"]}
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
                              source_dataset: str | None = None) -> Path:
    """``dataset_description.json`` of the derivatives dataset, plus the dseg lookup table."""
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
    if source_dataset:
        desc["SourceDatasets"] = [{"URL": str(source_dataset)}]
    write_json(desc, output_dir / "dataset_description.json")
    write_tsv(DSEG_LOOKUP, output_dir / "desc-deepmir_dseg.tsv")
    return output_dir / "dataset_description.json"


def write_subject(outputs: dict, output_dir, subject) -> dict[str, Path]:
    """Copy one subject's workflow outputs under their BIDS-derivatives names.

    ``outputs`` maps workflow output names to files (missing/None entries are skipped);
    ``subject`` is a :class:`pipelines.bids.SubjectInputs`. Returns the written paths by name.
    """
    output_dir = Path(output_dir)
    anat = output_dir / subject.anat_dir_rel
    written = {}
    for name, template in DERIVATIVE_NAMES.items():
        src = outputs.get(name)
        if src is None:
            continue
        written[name] = copy_atomic(src, anat / template.format(key=subject.key))
    if outputs.get("report") is not None:
        written["report"] = copy_atomic(outputs["report"], output_dir / f"{subject.key}.html")
    return written


def write_group_tables(output_dir, subjects_written: list[dict]) -> dict[str, Path]:
    """``group/lesions.tsv``, ``group/summary.tsv`` and ``group/dropped.tsv`` from subject tables."""
    from deepmir_tasks.lesions.tables import write_group_tables as write_tables

    def paths(name):
        return [w[name] for w in subjects_written if w.get(name)]

    return write_tables(paths("lesions"), paths("summary"), output_dir, dropped_paths=paths("dropped"))
