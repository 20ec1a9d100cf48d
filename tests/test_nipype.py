"""DEEPMIR's steps as nipype 1 interfaces, run inside a nipype Workflow."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from workflows.nipype_interfaces import ExtractLesions


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
    prob_cmb = np.where(cmb | calc, 0.9999, 0.01)   # above the bundled record's minimum peak probability
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


def _world(img, ijk):
    return ijk @ img.affine[:3, :3].T + img.affine[:3, 3]


def _components(dseg_img):
    """(centroid in world mm, set of labels) of each 26-connected labelled component."""
    import cc3d

    lab = np.asarray(dseg_img.dataobj)
    comp = cc3d.connected_components(lab > 0, connectivity=26)
    out = []
    for i in range(1, int(comp.max()) + 1):
        vox = np.argwhere(comp == i)
        out.append((_world(dseg_img, vox.mean(axis=0)), set(np.unique(lab[comp == i]).tolist())))
    return out


@pytest.mark.slow
def test_preprocess_and_segment_run_in_a_nipype_workflow(small_cohort, tmp_path):
    """sub-01 of the small simulated cohort through ``Preprocess`` -> ``Segment`` in nipype.

    A 2 mm working grid keeps it fast (about 30 s of CPU). Measured on this subject (8 CMBs, 2 iron
    deposits, 3 calcifications, 5 veins): the SWI->T2w error 0.1-0.3 mm, 10 labelled components, 7
    of them within 1.4 mm of a true lesion (6 of the 8 CMBs labelled CMB), none near a calcification.
    """
    import json

    from nipype import Node, Workflow

    from deepmir_tasks.preprocess.register import transform_to_ras
    from workflows.nipype_interfaces import Preprocess, Segment

    anat = small_cohort / "sub-01" / "anat"
    truth_dir = small_cohort / "derivatives" / "annotations" / "sub-01" / "anat"
    truth_mask = nib.load(str(truth_dir / "sub-01_space-T2w_desc-brain_mask.nii.gz"))
    pre = Node(Preprocess(t2_file=str(anat / "sub-01_T2w.nii.gz"), swi_file=str(anat / "sub-01_swi.nii.gz"),
                          qsm_file=str(anat / "sub-01_Chimap.nii.gz"), mask_file=truth_mask.get_filename(),
                          voxel_size=2.0, allow_resolution=True), name="preprocess")
    seg = Node(Segment(), name="segment")  # the bundled model
    wf = Workflow(name="reuse_deepmir", base_dir=str(tmp_path / "work"))
    wf.config["execution"]["remove_unnecessary_outputs"] = False  # keep swi_to_t2 for the check below
    wf.connect([(pre, seg, [("t2", "t2"), ("swi", "swi"), ("qsm", "qsm"), ("mask", "mask")])])
    results = {n.name: n.result.outputs for n in wf.run().nodes()}
    p, s = results["preprocess"], results["segment"]

    # Preprocess: one 2 mm grid along the T2w's axes; the user's mask carried into it.
    imgs = {k: nib.load(getattr(p, k)) for k in ("t2", "swi", "qsm", "mask")}
    imgs.update({k: nib.load(getattr(s, k)) for k in ("dseg", "probseg_cmb", "probseg_iron")})
    grid = imgs["mask"]
    for name, img in imgs.items():
        assert img.shape == grid.shape and np.allclose(img.affine, grid.affine, atol=1e-4), name
    np.testing.assert_allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), 2.0, atol=1e-5)
    mask = np.asarray(grid.dataobj) > 0
    ijk = np.round(_world(grid, np.argwhere(np.ones(grid.shape, bool))) @ np.linalg.inv(truth_mask.affine)[:3, :3].T
                   + np.linalg.inv(truth_mask.affine)[:3, 3]).astype(int)
    inside = np.all((ijk >= 0) & (ijk < truth_mask.shape), axis=1)
    carried = np.zeros(len(ijk), bool)
    carried[inside] = np.asarray(truth_mask.dataobj)[tuple(ijk[inside].T)] > 0
    carried = carried.reshape(grid.shape)
    assert 2 * (mask & carried).sum() / (mask.sum() + carried.sum()) > 0.9
    for k in ("t2", "swi"):
        x = imgs[k].get_fdata()
        assert abs(np.median(x[mask])) < 1e-2 and np.all(x[~mask] == 0)   # robust z-score in the brain

    # swi_to_t2 recovers the simulated head motion between the sessions
    true_swi_to_t2 = np.asarray(json.loads((truth_dir / "sub-01_desc-truth_xfm.json").read_text())["swi_to_t2"])
    pts = _world(grid, np.argwhere(mask)[::5])
    pts_swi = pts @ np.linalg.inv(true_swi_to_t2)[:3, :3].T + np.linalg.inv(true_swi_to_t2)[:3, 3]
    est = transform_to_ras(p.swi_to_t2)
    err = np.linalg.norm(pts_swi @ est[:3, :3].T + est[:3, 3] - pts, axis=1)
    assert np.linalg.norm(pts_swi - pts, axis=1).mean() > 1.0   # there is motion to recover
    assert err.mean() < 1.0, err.mean()
    assert np.loadtxt(p.t2_to_mni).shape == (4, 4)

    # Segment: probabilities, and labelled components on the true lesions.
    cmb, iron = imgs["probseg_cmb"].get_fdata(), imgs["probseg_iron"].get_fdata()
    assert cmb.min() >= 0 and iron.min() >= 0 and (cmb + iron).max() <= 1 + 1e-5
    assert set(np.unique(np.asarray(imgs["dseg"].dataobj))) <= {0, 1, 2}
    truth = pd.read_csv(truth_dir / "sub-01_lesions.tsv", sep="\t")
    comps = _components(imgs["dseg"])
    lesions = truth[truth["kind"].isin(["cmb", "iron"])]
    xyz = lesions[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    dist = np.linalg.norm(np.array([c for c, _ in comps])[:, None] - xyz[None], axis=-1)
    found = dist.min(axis=0) <= 5.0
    assert found.mean() >= 0.5, dist.min(axis=0)                       # sensitivity, measured 0.7
    assert (dist.min(axis=1) <= 5.0).mean() >= 0.5, dist.min(axis=1)    # precision, measured 0.7
    cmb_found = [any(np.linalg.norm(c - x) <= 5.0 and 1 in labels for c, labels in comps)
                 for x in xyz[lesions["kind"].to_numpy() == "cmb"]]
    assert sum(cmb_found) >= 4, cmb_found                                # CMBs labelled CMB: 6 of 8
    calc = truth.loc[truth["kind"] == "calcification", ["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    assert all(np.linalg.norm(calc - c, axis=1).min() > 5.0 for c, _ in comps)
