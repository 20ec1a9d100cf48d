"""``simulate_subject``: one seeded T2w / SWI / QSM subject with ground truth.

Steps (all seeded by ``numpy.random.default_rng(seed)``):

1. Anatomy. The MNI152 2009a GM/WM maps, deep nuclei, sites and regions are pulled back into
   the T2w-session world through a random affine (size, pose) and a smooth non-linear warp,
   on an isotropic anatomy grid. A CSF rim, bone and scalp shells surround the brain.
2. Lesions and veins are placed (see :mod:`.lesions`), in T2w-session world mm.
3. T2w: a spin-echo contrast (CSF bright; iron-rich nuclei, haemosiderin, iron and calcium
   hypointense) sampled on an oblique axial grid with through-slice partial volume, lesions
   rendered with partial volume; then a smooth receive bias and Rician noise.
4. SWI/QSM (second session, random rigid head motion ``swi_to_t2``): susceptibility on a fine
   grid over the brain box of the SWI grid, field by FFT dipole convolution (B0 along the
   scanner z, which the oblique SWI slab sees tilted), GRE signal on the fine grid averaged in
   complex to the acquisition voxels (intravoxel dephasing, hence blooming), background field,
   bias and complex noise; SWI = magnitude x phase-mask^n from a high-pass-filtered phase;
   QSM = TKD or Tikhonov inversion of the noisy, brain-masked, averaged local field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .acquire import reconstruct_swi_qsm, simulate_gre, simulate_t2w, swi_geometry, t2w_grid
from .multiecho import echo_times
from . import variability
from .anatomy import NUCLEI_LABELS, mni_anatomy
from .head import build_anatomy, draw_head, draw_tissue
from .lesions import DEFAULT_RANGES, place_lesions, resolve_counts

__all__ = ["SimulatedSubject", "simulate_subject", "SIZES"]

#: size presets: voxel ranges (mm), anatomy-grid spacing, fine-grid target and budget
SIZES = {
    "full": dict(anat_vox=1.0, t2_inplane=(0.8, 1.0), t2_slice=(2.5, 4.0),
                 swi_inplane=(0.5, 0.9), swi_slice=(1.0, 2.0), fine_target=0.5,
                 max_fine_voxels=24e6, lesion_scale=1.0),
    "small": dict(anat_vox=2.0, t2_inplane=(2.7, 3.1), t2_slice=(5.5, 7.0),
                  swi_inplane=(2.6, 3.0), swi_slice=(4.0, 5.0), fine_target=1.3,
                  max_fine_voxels=3e6, lesion_scale=2.0),
}

LESION_COLUMNS = ["lesion_id", "kind", "x_mm", "y_mm", "z_mm", "radius_mm", "chi_ppm",
                  "chi_excess_ppm", "region", "dseg_label", "n_voxels_t2"]


@dataclass
class SimulatedSubject:
    """A simulated subject; images are nibabel ``Nifti1Image`` objects (see module docs)."""

    t2: object
    swi: object
    qsm: object
    dseg: object
    brain_mask: object
    t2_clean: object
    bias_t2: object
    lesions: object          # pandas DataFrame
    swi_to_t2: np.ndarray    # 4x4, SWI-session world mm -> T2w-session world mm
    params: dict = field(default_factory=dict)
    megre: dict | None = None  # megre=True: raw multi-echo GRE on the SWI grid (multiecho.echo_signals)


PROFILES = ("default", *variability.RANDOMISED_PROFILES)


def simulate_subject(seed: int, size: str = "full", *, lesion_counts: dict | None = None,
                     lesion_ranges: dict | None = None, profile: str = "default",
                     factors: dict | None = None, megre: bool = False) -> SimulatedSubject:
    """Simulate one subject.

    Args:
        seed: seed of ``numpy.random.default_rng``; the same seed gives identical images.
        size: ``"full"`` (T2w ~0.9x0.9x3 mm, SWI ~0.7x0.7x1.5 mm) or ``"small"`` (2.5-7 mm
            voxels, lesions scaled x2; a few seconds, for tests).
        lesion_counts: override the count ranges per kind, e.g. ``{"cmb": (20, 30), "iron": 4}``
            (kinds: cmb, iron, calcification, vein; defaults in ``lesions.DEFAULT_COUNTS``).
        lesion_ranges: override physical ranges (keys of ``lesions.DEFAULT_RANGES``).
        profile: ``"default"`` (the original simulator, unchanged for existing seeds) or
            ``"randomised"``: age-dependent physiology, lesions at every site and acquisition over
            the ranges of :data:`~.variability.FACTORS` (1.5/3/7 T, 0.5-6 mm voxels, minIP,
            FLAIR-like T2w, residual background fields...), each stage on its own random stream;
            ``"randomised2"``: the same subject with fine iron texture within the normal nuclei
            added (:data:`~.variability.V2_FACTORS`), a hard negative for iron deposits;
            ``"randomised3"``: that subject with the nuclei's darkening on SWI and T2w per ppm of
            iron drawn (:data:`~.variability.V3_FACTORS`), weak to strong.
        factors: randomised profiles only: pin factors, e.g. ``{"age_years": 85, "b0_tesla": 7.0}``
            (keys of the ``params["factors"]`` it records); the other draws stay the same.
        megre: also simulate the raw multi-echo GRE (magnitude and wrapped phase per echo,
            :mod:`~.multiecho`) of the same head, on the SWI grid, as ``megre``; its draws have their
            own random stream, so every other image is the same with or without it.
    """
    _check_args(size, lesion_counts, lesion_ranges, profile, factors)
    t_start = time.perf_counter()
    clock = _Clock()
    pre = SIZES[size]
    mni_anatomy()
    if profile == "default":
        rng = np.random.default_rng(int(seed))
        st = dict.fromkeys(("factors", "head", "grid", "lesions", "t2w", "gre", "recon"), rng)
        plan = _default_plan(rng, seed, size, pre, lesion_counts, lesion_ranges)
    else:
        st = dict(zip(("factors", "head", "grid", "lesions", "t2w", "gre", "recon"),
                      (np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 12]).spawn(7))))
        plan = _randomised_plan(st["factors"], seed, size, pre, lesion_counts, lesion_ranges, factors, profile)
    p, f, b0, te_swi = plan["params"], plan["factors"], plan["b0"], plan["te_swi"]
    t2_vox, swi_vox = plan["t2_vox"], plan["swi_vox"]

    # the head: geometry, tissue properties, anatomy grid in the T2w world
    head = draw_head(st["head"])
    tissue = draw_tissue(st["head"], b0)
    if f is not None:
        variability.apply_physiology(head, tissue, f)
    p.update(head["params"])
    p.update({"tissue_chi_ppm": tissue["chi"], "nucleus_chi_ppm": tissue["nucleus_chi"],
              "contrast": tissue["contrast"]})
    anat = build_anatomy(st["head"], head, tissue, pre["anat_vox"], te_swi)
    if f is not None:
        p["nucleus_centroids_t2_mm"] = _nucleus_centroids(anat)
    clock("anatomy")

    # lesions (T2w world), kept apart by at least most of a T2w voxel
    t2_aff, t2_shape = t2w_grid(st["grid"], anat, t2_vox)
    p.update({"t2_voxel_mm": t2_vox.tolist(), "t2_shape": list(t2_shape)})
    counts = resolve_counts(st["lesions"], plan["counts"])
    lesions = place_lesions(st["lesions"], anat, counts, t2_affine=t2_aff, t2_shape=t2_shape,
                            lesion_scale=pre["lesion_scale"], ranges=plan["ranges"],
                            nucleus_chi=tissue["nucleus_chi"], margin_mm=max(2.0, float(t2_vox.max()) * 0.75),
                            placement=plan["placement"])
    p["lesion_counts_requested"] = counts
    p["lesion_counts"] = {k: sum(les.kind == k for les in lesions) for k in counts}
    if f is not None:
        p["lesion_sites"] = [les.site for les in lesions]   # by lesion_id - 1
    clock("lesion placement")

    # session 1: T2w and truth; session 2: GRE -> SWI, QSM
    t2w = simulate_t2w(st["t2w"], anat, lesions, t2_aff, t2_shape, t2_vox, tissue["contrast"], p, acq=f)
    clock("T2w")
    geo = swi_geometry(st["gre"], anat, swi_vox, p)
    echoes = (np.random.default_rng([int(seed), 14]), echo_times(te_swi)) if megre else None
    gre = simulate_gre(st["gre"], anat, lesions, geo, head, b0, te_swi, tissue["contrast"], pre, p, clock, acq=f,
                       echoes=echoes)
    recon = reconstruct_swi_qsm(st["recon"], anat, geo, gre, p, clock, acq=f)
    raw = gre.get("echoes")
    del gre

    table = _lesion_table(lesions, t2w["n_voxels"])
    p["seconds"] = round(time.perf_counter() - t_start, 3)
    p["timings_s"] = clock.laps
    swi_aff = geo["affine"]
    return SimulatedSubject(
        t2=_nifti(t2w["t2"], t2_aff, np.float32), swi=_nifti(recon["swi"], swi_aff, np.float32),
        qsm=_nifti(recon["qsm"], swi_aff, np.float32), dseg=_nifti(t2w["dseg"], t2_aff, np.uint8),
        brain_mask=_nifti(t2w["brain_mask"], t2_aff, np.uint8),
        t2_clean=_nifti(t2w["t2_clean"], t2_aff, np.float32), bias_t2=_nifti(t2w["bias"], t2_aff, np.float32),
        lesions=table, swi_to_t2=geo["swi_to_t2"], params=p, megre=raw)


def _check_args(size, lesion_counts, lesion_ranges, profile, factors):
    """Refuse bad arguments before any work."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {profile!r}")
    if factors and profile not in variability.RANDOMISED_PROFILES:
        raise ValueError(f"factors can only be pinned with a randomised profile ({', '.join(variability.RANDOMISED_PROFILES)})")
    resolve_counts(np.random.default_rng(0), lesion_counts)
    for key, value in (lesion_ranges or {}).items():
        if key not in DEFAULT_RANGES:
            raise ValueError(f"unknown lesion range {key!r}; expected one of {sorted(DEFAULT_RANGES)}")
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"bad range for {key!r}: {value!r} (expected (low, high))")


def _default_plan(rng, seed, size, pre, lesion_counts, lesion_ranges) -> dict:
    """The original simulator's protocol draws (same calls, same order: seeds reproduce)."""
    b0 = float(rng.choice([1.5, 3.0], p=[0.2, 0.8]))
    te_swi = float(rng.uniform(0.015, 0.028) if b0 > 2 else rng.uniform(0.03, 0.045))
    p = {
        "seed": int(seed), "size": size, "b0_tesla": b0,
        "swi_echo_time_s": te_swi, "swi_repetition_time_s": float(rng.uniform(0.027, 0.045)),
        "swi_flip_angle_deg": float(rng.uniform(12, 20)),
        "t2_echo_time_s": float(rng.uniform(0.08, 0.11)),
        "t2_repetition_time_s": float(rng.uniform(3.0, 6.5)),
    }
    t2_vox = np.array([*(rng.uniform(*pre["t2_inplane"]),) * 2, rng.uniform(*pre["t2_slice"])])
    swi_vox = np.array([*(rng.uniform(*pre["swi_inplane"]),) * 2, rng.uniform(*pre["swi_slice"])])
    return {"params": p, "factors": None, "b0": b0, "te_swi": te_swi, "t2_vox": t2_vox, "swi_vox": swi_vox,
            "counts": lesion_counts, "ranges": lesion_ranges, "placement": None}


def _randomised_plan(rng, seed, size, pre, lesion_counts, lesion_ranges, pins, profile) -> dict:
    """A randomised profile's factors (recorded whole in ``params["factors"]``)."""
    f = variability.draw_factors(rng, pins, variability.RANDOMISED_PROFILES[profile])
    t2_vox, swi_vox = variability.voxel_sizes(f, pre, native=size == "full")
    p = {"seed": int(seed), "size": size, "profile": profile, "factors": f, "age_years": f["age_years"]}
    p.update({k: f[k] for k in ("b0_tesla", "swi_echo_time_s", "swi_repetition_time_s", "swi_flip_angle_deg",
                                "t2_echo_time_s", "t2_repetition_time_s", "t2_variant", "t2_inversion_time_s")})
    return {"params": p, "factors": f, "b0": f["b0_tesla"], "te_swi": f["swi_echo_time_s"], "t2_vox": t2_vox,
            "swi_vox": swi_vox, "counts": variability.lesion_counts(f, lesion_counts),
            "ranges": variability.lesion_ranges(f, lesion_ranges),
            "placement": variability.placement(f, lesion_counts)}


def _nucleus_centroids(anat) -> dict:
    """Centroid (T2w world mm) of each deep nucleus's core (membership > 0.5) in this head."""
    from scipy import ndimage as ndi

    core = np.where(anat["nucleus_w"] > 0.5, anat["nucleus"], 0)
    labels = list(range(1, len(NUCLEI_LABELS) + 1))
    out = {}
    for name, lab, com in zip(NUCLEI_LABELS, labels, ndi.center_of_mass(core > 0, core, labels)):
        if np.all(np.isfinite(com)):
            out[name] = np.round(anat["affine"][:3, :3] @ np.asarray(com) + anat["affine"][:3, 3], 2).tolist()
    return out


def _lesion_table(lesions, n_voxels):
    import pandas as pd

    rows = []
    for i, les in enumerate(lesions):
        c = les.centre
        rows.append({"lesion_id": i + 1, "kind": les.kind, "x_mm": c[0], "y_mm": c[1], "z_mm": c[2],
                     "radius_mm": les.radius_mm, "chi_ppm": les.chi_ppm,
                     "chi_excess_ppm": les.chi_excess_ppm, "region": les.region,
                     "dseg_label": les.dseg_label, "n_voxels_t2": n_voxels[i]})
    table = pd.DataFrame(rows, columns=LESION_COLUMNS)
    for col in ("x_mm", "y_mm", "z_mm", "radius_mm", "chi_ppm", "chi_excess_ppm"):
        table[col] = table[col].astype(float).round(4)
    return table


def _nifti(data, affine, dtype):
    """A NIfTI image in scanner coordinates (qform = sform = 1), mm units."""
    import nibabel as nib

    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    out.header.set_xyzt_units("mm", "sec")
    out.set_data_dtype(dtype)
    return out


class _Clock:
    """Seconds spent per stage (kept in ``params['timings_s']``)."""

    def __init__(self):
        self.t = time.perf_counter()
        self.laps = {}

    def __call__(self, name):
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 3)
        self.t = now
