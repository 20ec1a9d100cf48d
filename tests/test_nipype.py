"""DEEPMIR's steps as nipype 1 interfaces, run inside a nipype Workflow."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from deepmir_tasks.nipype_interfaces import ExtractLesions


def _save(data, path, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return str(path)


def test_extract_lesions_runs_in_a_nipype_workflow(tmp_path):
    from nipype import Node, Workflow

    shape, affine = (40, 40, 40), np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-20, -20, -20)
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    cmb = np.linalg.norm(grid - (12, 20, 20), axis=-1) <= 1.5      # a microbleed
    calc = np.linalg.norm(grid - (28, 20, 20), axis=-1) <= 1.5     # a calcification-like mimic
    prob_cmb = np.where(cmb | calc, 0.95, 0.01)
    qsm = np.where(cmb, 0.6, np.where(calc, -0.3, 0.0))
    swi = np.where(cmb | calc, 0.2, 1.0)
    files = dict(
        probseg_cmb=_save(prob_cmb, tmp_path / "pc.nii.gz", affine),
        probseg_iron=_save(np.zeros(shape), tmp_path / "pi.nii.gz", affine),
        dseg=_save((prob_cmb > 0.5).astype(np.uint8), tmp_path / "d.nii.gz", affine),
        qsm=_save(qsm, tmp_path / "q.nii.gz", affine),
        swi=_save(swi, tmp_path / "s.nii.gz", affine),
        mask=_save(np.ones(shape), tmp_path / "m.nii.gz", affine),
    )
    node = Node(ExtractLesions(participant_id="01", **files), name="deepmir_lesions")
    wf = Workflow(name="reuse_deepmir", base_dir=str(tmp_path / "work"))
    wf.add_nodes([node])
    graph = wf.run()
    result = next(iter(graph.nodes())).result
    table = pd.read_csv(result.outputs.lesions, sep="\t", na_values="n/a")
    dropped = pd.read_csv(result.outputs.dropped, sep="\t", na_values="n/a")
    assert table["label"].tolist() == ["cmb"]
    # centroid of the microbleed in world mm: voxel (12, 20, 20) + offset (-20, -20, -20)
    np.testing.assert_allclose(table[["x_mm", "y_mm", "z_mm"]].to_numpy()[0], (-8, 0, 0), atol=0.01)
    assert dropped["reason"].tolist() == ["negative_qsm"]
