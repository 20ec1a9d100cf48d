"""``write_bids_cohort`` and ``deepmir simulate``: BIDS names, sidecars, truth files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from deepmir_tasks.io import load_image
from deepmir_tasks.simulate import write_bids_cohort
from pipelines.cli import main
from helpers.simulate import ALL_KINDS, SEED_ALL_KINDS, data


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """sub-02 of a cohort with base seed SEED_ALL_KINDS - 1, i.e. the same subject as sim_all_kinds."""
    root = tmp_path_factory.mktemp("simbids") / "bids"
    labels = write_bids_cohort(root, 1, seed=SEED_ALL_KINDS - 1, size="small", start=2,
                               lesion_counts=ALL_KINDS)
    return root, labels


def test_cohort_layout_and_names(cohort):
    root, labels = cohort
    assert labels == ["02"]
    anat = root / "sub-02" / "anat"
    ann = root / "derivatives" / "annotations"
    for name in ("sub-02_T2w.nii.gz", "sub-02_T2w.json", "sub-02_swi.nii.gz", "sub-02_swi.json",
                 "sub-02_Chimap.nii.gz", "sub-02_Chimap.json"):
        assert (anat / name).is_file(), name
    for name in ("sub-02_space-T2w_dseg.nii.gz", "sub-02_lesions.tsv",
                 "sub-02_space-T2w_desc-brain_mask.nii.gz", "sub-02_desc-truth_xfm.json"):
        assert (ann / "sub-02" / "anat" / name).is_file(), name
    for path in (root / "dataset_description.json", ann / "dataset_description.json"):
        desc = json.loads(path.read_text())
        assert desc["BIDSVersion"] and desc["Name"]
    assert json.loads((ann / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    dseg_tsv = pd.read_csv(ann / "dseg.tsv", sep="\t")
    assert dseg_tsv["index"].tolist() == [0, 1, 2]
    part = pd.read_csv(root / "participants.tsv", sep="\t")
    assert part["participant_id"].tolist() == ["sub-02"]
    assert "*_swi.nii.gz" in (root / ".bidsignore").read_text()
    # no temporary files left behind by the atomic writers
    assert not [p for p in root.rglob(".*") if p.is_file() and p.name != ".bidsignore"]


def test_written_files_match_the_simulated_subject(cohort, sim_all_kinds):
    root, _ = cohort
    s = sim_all_kinds
    anat = root / "sub-02" / "anat"
    ann = root / "derivatives" / "annotations" / "sub-02" / "anat"
    for name, img in (("sub-02_T2w.nii.gz", s.t2), ("sub-02_swi.nii.gz", s.swi), ("sub-02_Chimap.nii.gz", s.qsm)):
        loaded = load_image(anat / name)
        assert np.allclose(loaded.affine, img.affine)
        assert np.array_equal(data(loaded), data(img))
    dseg = load_image(ann / "sub-02_space-T2w_dseg.nii.gz")
    assert np.array_equal(data(dseg), data(s.dseg))
    les = pd.read_csv(ann / "sub-02_lesions.tsv", sep="\t")
    assert list(les.columns[:7]) == ["lesion_id", "kind", "x_mm", "y_mm", "z_mm", "radius_mm", "chi_ppm"]
    assert np.allclose(les[["x_mm", "y_mm", "z_mm"]].to_numpy(), s.lesions[["x_mm", "y_mm", "z_mm"]].to_numpy())
    assert les["kind"].tolist() == s.lesions["kind"].tolist()
    xfm = json.loads((ann / "sub-02_desc-truth_xfm.json").read_text())
    assert np.allclose(np.array(xfm["swi_to_t2"]), s.swi_to_t2)


def test_sidecars_describe_the_acquisition(cohort, sim_all_kinds):
    root, _ = cohort
    p = sim_all_kinds.params
    anat = root / "sub-02" / "anat"
    t2 = json.loads((anat / "sub-02_T2w.json").read_text())
    swi = json.loads((anat / "sub-02_swi.json").read_text())
    qsm = json.loads((anat / "sub-02_Chimap.json").read_text())
    assert t2["EchoTime"] == pytest.approx(p["t2_echo_time_s"], abs=1e-5)
    assert swi["EchoTime"] == pytest.approx(p["swi_echo_time_s"], abs=1e-5)
    assert swi["MagneticFieldStrength"] == qsm["MagneticFieldStrength"] == p["b0_tesla"]
    assert swi["B0Direction"] == [0.0, 0.0, 1.0]
    assert np.allclose(qsm["B0DirectionVoxel"], p["b0_direction_voxel"], atol=1e-5)
    assert qsm["Units"] == "ppm" and qsm["DipoleInversionMethod"] == p["qsm_method"]
    assert ("TKDThreshold" in qsm) == (p["qsm_method"] == "TKD")
    assert np.allclose(swi["VoxelSizeMM"], p["swi_voxel_mm"], atol=1e-3)
    assert t2["SliceThickness"] == pytest.approx(p["t2_voxel_mm"][2], abs=1e-3)


def test_cli_simulate_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["simulate", str(out), "--subjects", "1", "--seed", "3", "--size", "small", "--start", "7",
               "--cmb", "2-3", "--calcification", "1", "--vein", "0"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "sub-07" in printed and "cmb" in printed
    les = pd.read_csv(out / "derivatives/annotations/sub-07/anat/sub-07_lesions.tsv", sep="\t")
    assert 2 <= (les["kind"] == "cmb").sum() <= 3
    assert (les["kind"] == "calcification").sum() == 1 and (les["kind"] == "vein").sum() == 0
    assert (out / "sub-07/anat/sub-07_T2w.nii.gz").is_file()


def test_cli_simulate_megre_writes_echoes_the_gre_reader_accepts(tmp_path, capsys):
    from deepmir_tasks.qsm.bids import find_megre, load_megre

    out = tmp_path / "cli"
    assert main(["simulate", str(out), "--subjects", "1", "--seed", "4", "--size", "small", "--megre"]) == 0
    assert "MEGRE" in capsys.readouterr().out
    mag, phase = find_megre(out / "sub-01" / "anat", "sub-01")
    data = load_megre(mag, phase)
    assert len(mag) == len(phase) == 4 and data.magnitude.shape[3] == 4
    assert np.all(np.diff(data.echo_times_s) > 0) and data.b0_tesla > 0
    assert np.abs(data.phase).max() <= np.pi + 1e-3  # scanner integers read back as radians


def test_cli_simulate_refuses_a_file_as_output(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main(["simulate", str(target), "--subjects", "1", "--size", "small"]) == 2
    err = capsys.readouterr().err
    assert "a_file" in err and len(err.strip().splitlines()) == 1
    assert main(["simulate", str(tmp_path / "x"), "--subjects", "0"]) == 2


def test_simulate_subject_pydra_task(tmp_path):
    from deepmir_tasks.io import load_volume
    from deepmir_tasks.simulate.tasks import SimulateSubject

    outputs = SimulateSubject(seed=SEED_ALL_KINDS + 1, size="small", label="05", n_cmb_min=2, n_cmb_max=2)(
        worker="debug", cache_root=tmp_path / "cache")
    t2, _ = load_volume(str(outputs.t2))
    dseg, _ = load_volume(str(outputs.dseg), allow_empty=True)
    assert t2.shape == dseg.shape
    assert str(outputs.t2).endswith("sub-05_T2w.nii.gz")
    les = pd.read_csv(str(outputs.lesions), sep="\t")
    assert (les["kind"] == "cmb").sum() == 2
