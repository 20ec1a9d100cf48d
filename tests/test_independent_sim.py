"""The independent test generator (benchmarks/independent_sim): separation from DEEPMIR's own
simulator, truth that lands on its lesions, the physics signs, age-dependent nuclear iron, and
what each stress condition claims to change. Small volumes: a 76 x 70 x 50 mm crop of the head."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.independent_sim import CONDITIONS, physics, simulate_subject
from benchmarks.independent_sim.conditions import draw_protocol, get_condition
from benchmarks.independent_sim.nuclei import NUCLEI, nucleus_chi, nucleus_names

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "benchmarks" / "independent_sim"

#: basal ganglia, thalamus, midbrain and some cortex: x -38..38, y -44..26, z -22..28 (MNI mm)
CROP = (slice(60, 136), slice(90, 160), slice(50, 100))
COUNTS = {"cmb": 4, "iron": 2, "calcification": 2}
ALLOWED = {"numpy", "scipy", "nibabel", "nilearn", "pandas", "__future__", "dataclasses", "functools",
           "importlib", "pathlib", "json", "argparse", "sys", "time", "resource"}


@pytest.fixture(scope="module")
def sim():
    return simulate_subject(11, "default", crop=CROP, counts=COUNTS)


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_imports_only_numeric_libraries_and_nothing_from_deepmir():
    files = sorted(PKG.glob("*.py"))
    assert len(files) >= 8
    for f in files:
        for mod in _imports(f):
            assert not mod.startswith("deepmir"), f"{f.name} imports {mod}"
            assert mod.split(".")[0] in ALLOWED, f"{f.name} imports {mod}"
        dynamic = re.search(r"(import_module|__import__)\(\s*[\"']deepmir", f.read_text())
        assert dynamic is None, f"{f.name} imports deepmir dynamically"


def test_no_deepmir_module_is_loaded_even_indirectly():
    mods = [f"benchmarks.independent_sim.{f.stem}" for f in sorted(PKG.glob("*.py")) if f.stem != "__init__"]
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.startswith('deepmir'))\nassert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_written_truth_is_what_deepmir_evaluate_reads(sim, tmp_path):
    import shutil

    from benchmarks.independent_sim import write_subject
    from deepmir_tasks.lesions.evaluate import evaluate_cohort

    bids = tmp_path / "bids"
    paths = write_subject(sim, bids, "01")
    for suffix in ("T2w", "swi", "Chimap"):
        assert (bids / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz").exists()
    assert paths["nuclei"].exists() and paths["mask"].exists() and paths["lesions"].exists()
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(paths["dseg"], pred / "sub-01_dseg.nii.gz")     # a perfect prediction
    ev = evaluate_cohort(pred, bids, tolerance_mm=5.0)
    table = ev.per_class.set_index("label")
    assert table.loc["cmb", "n_true"] == COUNTS["cmb"] and table.loc["iron", "n_true"] == COUNTS["iron"]
    assert (table["sensitivity"] == 1.0).all() and (table["precision"] == 1.0).all()


def _world_to_voxel(img, xyz):
    return np.rint(np.linalg.inv(img.affine) @ np.append(xyz, 1.0))[:3].astype(int)


def _centre(les):
    return np.array([les["x_mm"], les["y_mm"], les["z_mm"]])


def test_every_kind_is_placed_and_truth_lands_on_its_lesion(sim):
    from scipy import ndimage

    kinds = [r["kind"] for r in sim.lesions]
    assert {k: kinds.count(k) for k in COUNTS} == COUNTS
    dseg = np.asarray(sim.dseg.dataobj)
    for les in sim.lesions:
        ijk = _world_to_voxel(sim.dseg, _centre(les))
        box = dseg[tuple(slice(max(i - 1, 0), i + 2) for i in ijk)]
        if les["label"]:
            assert (box == les["label"]).any(), les
        else:
            assert not box.any(), "calcifications are not labelled"
    for value, kind in ((1, "cmb"), (2, "iron")):   # one connected component per lesion
        assert ndimage.label(dseg == value, np.ones((3, 3, 3)))[1] == kinds.count(kind)


def _gre_voxel(sim, les):
    xyz = (np.linalg.inv(sim.swi_to_t2) @ np.append(_centre(les), 1.0))[:3]
    return _world_to_voxel(sim.qsm, xyz)


def test_qsm_positive_at_microbleeds_and_iron_negative_at_calcifications(sim):
    qsm = np.asarray(sim.qsm.dataobj)
    for les in sim.lesions:
        ijk = _gre_voxel(sim, les)
        box = qsm[tuple(slice(i - 2, i + 3) for i in ijk)]
        if les["kind"] == "calcification":
            assert box.min() < -0.04, les
        else:
            assert box.max() > 0.08, les


def test_lesions_darker_on_swi_than_surroundings(sim):
    swi = np.asarray(sim.swi.dataobj)
    for les in sim.lesions:
        ijk = _gre_voxel(sim, les)
        core = swi[tuple(slice(i - 2, i + 3) for i in ijk)].min()
        ring = np.median(swi[tuple(slice(i - 12, i + 13) for i in ijk)])
        limit = 0.9 if les["kind"] == "iron" else 0.7
        assert core < limit * ring, les


def test_nuclear_susceptibility_rises_with_age_within_literature_ranges():
    ages = np.arange(20, 95, 5)
    for name in NUCLEI:
        curve = [nucleus_chi(name, a) for a in ages]
        assert np.all(np.diff(curve) > 0), name
    assert 0.18 <= nucleus_chi("globus_pallidus", 80) <= 0.23
    assert 0.08 <= nucleus_chi("putamen", 80) <= 0.12
    assert 0.05 <= nucleus_chi("caudate", 80) <= 0.09
    for name in ("substantia_nigra", "red_nucleus"):
        assert 0.10 <= nucleus_chi(name, 75) <= 0.15
    assert 0.08 <= nucleus_chi("dentate", 75) <= 0.12
    old = get_condition("old_high_iron")
    assert 0.22 <= nucleus_chi("globus_pallidus", old.age_years[1], old.nuclear_iron_factor[1]) <= 0.27


def test_older_head_has_more_nuclear_susceptibility_in_the_image():
    from benchmarks.independent_sim.anatomy import build_head
    from benchmarks.independent_sim.subject import susceptibility_map

    head = build_head(CROP)
    proto = draw_protocol(get_condition("default"), np.random.default_rng(0))
    means = []
    for age in (30.0, 85.0):
        chi = susceptibility_map(head, dict(proto, age_years=age), np.random.default_rng(5),
                                 counts={"cmb": 0, "iron": 0, "calcification": 0})[0]
        gp = np.isin(head.nuclei, [nucleus_names().index(f"globus_pallidus_{h}") + 1 for h in "RL"])
        means.append(chi[gp].mean())
    assert means[1] > means[0] + 0.02



def test_nucleus_texture_is_an_ablation_on_the_same_subject():
    """``nucleus_texture`` 0 makes the nuclei uniform and leaves the rest of the subject as it was."""
    from scipy import ndimage

    from benchmarks.independent_sim.anatomy import build_head
    from benchmarks.independent_sim.subject import susceptibility_map

    head = build_head(CROP)
    proto = draw_protocol(get_condition("default"), np.random.default_rng(0))
    assert proto["nucleus_texture"] == get_condition("default").nucleus_texture > 0

    def chi(texture, counts=None):
        return susceptibility_map(head, dict(proto, nucleus_texture=texture), np.random.default_rng(5), counts)

    none = {"cmb": 0, "iron": 0, "calcification": 0}
    textured, uniform = chi(proto["nucleus_texture"], none)[0], chi(0.0, none)[0]
    core = ndimage.binary_erosion(head.nuclei == nucleus_names().index("globus_pallidus_R") + 1, iterations=2)
    assert core.sum() > 50
    rel_sd = lambda c: np.std(c[core]) / np.mean(c[core])  # noqa: E731
    assert rel_sd(uniform) < 0.02 < 0.06 < rel_sd(textured)
    outside = ~ndimage.binary_dilation(head.nuclei > 0, iterations=4)
    assert np.abs(textured[outside] - uniform[outside]).max() < 1e-4
    # the same lesions in the same places
    key = lambda lesions: [(les["kind"], les["nucleus"], les["radius_mm"], les["chi_ppm"]) for les in lesions]  # noqa: E731
    assert key(chi(proto["nucleus_texture"])[2]) == key(chi(0.0)[2])
    with pytest.raises(ValueError, match="nucleus_texture"):
        simulate_subject(1, "default", crop=CROP, overrides={"nucleus_texture": -0.1})


def test_nucleus_r2s_scale_darkens_the_nuclei_only_and_keeps_their_susceptibility():
    """``nucleus_r2s_scale`` adds R2* to the nuclei's iron alone: the same chi and lesions, R2* up only
    in and around the nuclei; unknown or negative ablations are refused."""
    from scipy import ndimage

    from benchmarks.independent_sim.anatomy import build_head
    from benchmarks.independent_sim.subject import susceptibility_map

    head = build_head(CROP)
    proto = draw_protocol(get_condition("default"), np.random.default_rng(0))
    assert proto["nucleus_r2s_scale"] == 1.0
    none = {"cmb": 0, "iron": 0, "calcification": 0}
    law = susceptibility_map(head, proto, np.random.default_rng(5), none)
    dark = susceptibility_map(head, dict(proto, nucleus_r2s_scale=5.0), np.random.default_rng(5), none)
    assert np.array_equal(law[0], dark[0])                        # the same susceptibility
    gp = ndimage.binary_erosion(head.nuclei == nucleus_names().index("globus_pallidus_R") + 1, iterations=2)
    extra = dark[1] - law[1]
    assert np.median(extra[gp]) > 4 * 28.0 * 0.05                # 4 x 28 /s per ppm of a >= 0.05 ppm nucleus
    outside = ~ndimage.binary_dilation(head.nuclei > 0, iterations=4)
    assert np.abs(extra[outside]).max() < 0.05                    # /s: the nuclei's blurred edge only
    with pytest.raises(ValueError, match="cannot be overridden"):
        simulate_subject(1, "default", crop=CROP, overrides={"age_years": 50.0})
    with pytest.raises(ValueError, match="nucleus_r2s_scale"):
        simulate_subject(1, "default", crop=CROP, overrides={"nucleus_r2s_scale": -1.0})


def test_dipole_field_of_a_sphere_matches_the_analytic_solution():
    n, a, chi0 = 64, 6.0, 1.0
    g = np.indices((n, n, n)) - n // 2
    chi = ((g ** 2).sum(0) <= a ** 2).astype(np.float32) * chi0
    b = np.array([0.3, 0.0, 1.0]) / np.linalg.norm([0.3, 0.0, 1.0])
    field = physics.dipole_field(chi, (1.0, 1.0, 1.0), b)
    r = 16.0
    pole = np.rint(n // 2 + r * b).astype(int)
    assert abs(field[tuple(pole)] - 2 / 3 * chi0 * (a / r) ** 3) < 0.015
    assert abs(field[n // 2, n // 2, n // 2]) < 0.03            # Lorentz sphere: no field inside
    eq = np.rint(n // 2 + r * np.array([b[2], 0, -b[0]])).astype(int)
    assert abs(field[tuple(eq)] + 1 / 3 * chi0 * (a / r) ** 3) < 0.015
    mask = np.ones(chi.shape, bool)
    for method, reg in (("TKD", 0.15), ("Tikhonov", 0.01)):
        rec = physics.invert_dipole(field, mask, (1.0, 1.0, 1.0), b, method, reg)
        assert 0.6 * chi0 < rec[n // 2, n // 2, n // 2] - np.median(rec) < 1.2 * chi0, method


def test_each_condition_changes_what_it_claims():
    base = draw_protocol(get_condition("default"), np.random.default_rng(1))
    draws = {name: draw_protocol(c, np.random.default_rng(1)) for name, c in CONDITIONS.items()}
    assert base["b0_tesla"] == 3.0 and base["swi_voxel_mm"][2] <= 2.0 and base["t2_voxel_mm"][2] <= 3.0
    assert draws["old_high_iron"]["age_years"] >= 78 and draws["old_high_iron"]["nuclear_iron_factor"] > 1.1
    assert draws["1p5T_2d_thick"]["b0_tesla"] == 1.5 and draws["1p5T_2d_thick"]["swi_voxel_mm"][2] == 3.0
    assert draws["1p5T_2d_thick"]["gre_2d"] and draws["1p5T_2d_thick"]["gre_te_s"] > base["gre_te_s"]
    assert draws["7T"]["b0_tesla"] == 7.0 and draws["7T"]["gre_te_s"] < base["gre_te_s"]
    assert draws["thick_t2"]["t2_voxel_mm"][2] == 6.0
    assert draws["noisy"]["snr_swi"] < CONDITIONS["default"].snr_swi[0] / 2
    assert draws["bad_background"]["residual_background"] > 0.04 and draws["bad_background"]["qsm_method"] == "TKD"
    assert base["residual_background"] == 0.0
    with pytest.raises(ValueError, match="unknown condition"):
        get_condition("3T_wishful")


@pytest.mark.slow
@pytest.mark.parametrize("condition,image,zooms", [("thick_t2", "t2", (0.9, 0.9, 6.0)),
                                                  ("1p5T_2d_thick", "swi", (0.9, 0.9, 3.0)),
                                                  ("7T", "qsm", (0.5, 0.5, 1.0))])
def test_condition_images_have_the_claimed_geometry(condition, image, zooms):
    s = simulate_subject(11, condition, crop=CROP, counts={"cmb": 1, "iron": 1, "calcification": 0})
    assert np.allclose(getattr(s, image).header.get_zooms()[:3], zooms)
    assert s.params["b0_tesla"] == CONDITIONS[condition].b0_tesla


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    from benchmarks.independent_sim.__main__ import main

    assert main([str(tmp_path / "out"), "--subjects", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "out" in err and "at least 1" in err


def test_stress_scoring_counts_calcification_and_nucleus_calls(sim, tmp_path):
    import shutil

    import nibabel as nib
    import pandas as pd

    from benchmarks.bench_stress import format_table, score_condition
    from benchmarks.independent_sim import write_subject

    root = tmp_path / "default"
    paths = write_subject(sim, root / "bids", "01")
    anat = root / "deriv" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(paths["mask"], anat / "sub-01_space-T2w_desc-brain_mask.nii.gz")
    calc = next(r for r in sim.lesions if r["kind"] == "calcification")
    nuclei = nib.load(paths["nuclei"])
    ijk = np.argwhere(np.asarray(nuclei.dataobj) == nucleus_names().index("globus_pallidus_L") + 1).mean(0)
    gp = (nuclei.affine @ np.append(ijk, 1.0))[:3]
    dets = pd.DataFrame([
        {"participant_id": "sub-01", "label": "cmb", "x_mm": calc["x_mm"] + 1, "y_mm": calc["y_mm"],
         "z_mm": calc["z_mm"], "matched": False},
        {"participant_id": "sub-01", "label": "iron", "x_mm": gp[0], "y_mm": gp[1], "z_mm": gp[2],
         "matched": False},
    ])
    ev = root / "evaluation"
    ev.mkdir()
    dets.to_csv(ev / "detections.tsv", sep="\t", index=False)
    pd.DataFrame([{"label": "cmb", "sensitivity": 0.0, "precision": 0.0, "fp_per_subject": 1.0, "tp": 0,
                   "n_true": 4, "fp": 1},
                  {"label": "iron", "sensitivity": 0.0, "precision": 0.0, "fp_per_subject": 1.0, "tp": 0,
                   "n_true": 2, "fp": 1}]).to_csv(ev / "per_class.tsv", sep="\t", index=False)
    row = score_condition(root)
    assert row["calc_called_cmb"] == f"1/{COUNTS['calcification']}"
    assert row["nucleus_false_iron"] == 1
    assert row["lesions_in_mask"] == f"{COUNTS['cmb'] + COUNTS['iron']}/{COUNTS['cmb'] + COUNTS['iron']}"
    md = format_table([row], markdown=True).splitlines()
    assert md[0].startswith("| condition") and md[2].startswith("| default | 1 |")


def test_stress_subset_view_leaves_out_the_dropped_modalities(sim, tmp_path):
    from benchmarks.bench_stress import subset_tag, subset_view
    from benchmarks.independent_sim import write_subject

    bids = tmp_path / "bids"
    write_subject(sim, bids, "01")
    view = subset_view(bids, tmp_path / f"bids{subset_tag(['swi', 't2'])}", ["swi", "t2"])
    assert view.name == "bids_t2+swi" and subset_tag(["t2", "swi", "qsm"]) == ""
    names = sorted(p.name for p in (view / "sub-01" / "anat").iterdir())
    assert names == sorted(p.name for p in (bids / "sub-01" / "anat").iterdir() if "_Chimap." not in p.name)
    assert any("_T2w." in n for n in names) and not (view / "derivatives").exists()
    assert all((view / "sub-01" / "anat" / n).resolve().parent == (bids / "sub-01" / "anat").resolve() for n in names)


def test_stress_cohort_seeds_follow_the_condition_and_the_offset():
    from benchmarks.bench_stress import condition_seed

    names = list(CONDITIONS)
    assert condition_seed("default") == 7_300_000 and names[0] == "default"
    assert condition_seed("default", 100_000) == 7_400_000              # the unseen default cohort
    assert condition_seed(names[1]) == 7_310_000
    assert len({condition_seed(c) for c in names}) == len(names)
