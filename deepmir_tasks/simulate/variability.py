"""The ``randomised`` profile: every factor real scans vary in, drawn over its real-world range.

Each range is written once, in :data:`FACTORS`, with the paper or atlas it comes from. Values
read off published figures are approximate (a few hundredths of a ppm); where a range is wider
than the population's on purpose (rare findings over-sampled for training), its note says so.
``draw_factors(rng, pins)`` draws one subject's factors (a flat dict, all recorded in
``params``); ``pins`` fixes any of them (e.g. ``{"age_years": 85, "b0_tesla": 7.0}``) without
changing the other draws. The functions applying them (head, tissue, lesions, acquisition) live
in :mod:`.subject` and the modules it calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import NUCLEI
from .lesions import DEFAULT_COUNTS, DEFAULT_RANGES, Placement

__all__ = ["Factor", "FACTORS", "NUCLEUS_LIFESPAN", "RANDOMISED_PROFILES", "V2_FACTORS", "V3_FACTORS", "nucleus_chi_at_age", "draw_factors", "apply_physiology",
           "voxel_sizes", "lesion_ranges", "lesion_counts", "placement", "CMB_SITES", "IRON_NUCLEI"]


@dataclass(frozen=True)
class Factor:
    low: float
    high: float
    unit: str
    source: str


_LI14 = "Li et al. 2014, Hum Brain Mapp 35:2698 (susceptibility over the lifespan)"
_HAACKE09 = "Haacke et al. 2009, AJNR 30:19 (SWI technical aspects)"
FACTORS = {
    # ---- physiology
    "age_years": Factor(20, 90, "years", "adult lifespan; " + _LI14),
    "nucleus_heterogeneity": Factor(0.0, 0.3, "fraction", "smooth iron gradients within normal nuclei "
                                    "(e.g. posterior putamen, medial pallidum): Deistung et al. 2013; Haacke "
                                    "et al. 2005 Magn Reson Imaging 23:1 (iron stores)"),
    # profile randomised2 only (V2_FACTORS): fine-grained iron within normal nuclei, patches at the
    # scale of a focal iron deposit that are not deposits: healthy adults' nuclei hold "regional high
    # iron" sub-regions that grow with age (Li Y et al. 2021, Front Neurosci 14:607705, 623 subjects
    # 20-90 years), and uneven iron within nuclei shows in QSM histograms (Lancione et al. 2022,
    # NeuroImage Clin 34:102989). Range wider than typical on purpose: hard negatives.
    "nucleus_texture": Factor(0.0, 0.2, "fraction", "relative SD of the fine iron texture within normal "
                              "nuclei; Li Y et al. 2021 Front Neurosci 14:607705; Lancione et al. 2022 "
                              "NeuroImage Clin 34:102989"),
    "nucleus_texture_mm": Factor(1.0, 3.0, "mm", "grain (Gaussian smoothing) of that texture: from the "
                                 "voxel scale of 3 T QSM to sub-nuclear patches; same sources"),
    # profile randomised3 only (V3_FACTORS): how dark a nucleus's iron makes it on the GRE magnitude
    # (R2*, at 3 T; scaled with B0) and on T2w, per ppm of its susceptibility. The default profile draws
    # 150-250 /s and 2.5-4 per ppm, so a bright-QSM nucleus is always dark on SWI and T2w, while a
    # focal deposit (a separate, milder darkening) is not; real scans do not hold to one slope. The
    # R2*-susceptibility slope of deep grey matter differs between reports by several fold, from
    # ~30 /s per ppm (ratio of the post-mortem iron slopes of R2* and of susceptibility, Langkammer et
    # al. 2010 Radiology 257:455 and 2012 NeuroImage 62:1593, as another simulator reads them) to
    # ~200 in vivo at 3 T (pallidum against cortex); T2 shortening by iron is weaker than R2*'s and
    # sequence-dependent (Gelman et al. 1999 Radiology 210:759). Design choice: the whole span, so that
    # a nucleus's level cannot be read off its SWI or T2w darkness (hard negatives for iron deposits).
    "nucleus_r2s_per_ppm": Factor(25.0, 250.0, "1/s per ppm at 3 T", "R2* of nuclear iron; Langkammer et "
                                  "al. 2010 Radiology 257:455; Langkammer et al. 2012 NeuroImage 62:1593; "
                                  "design choice (whole span of reported slopes)"),
    "nucleus_t2_per_ppm": Factor(0.5, 4.0, "per ppm", "T2w darkening of nuclear iron, exp(-k chi); Gelman et "
                                 "al. 1999 Radiology 210:759; design choice (weak to the default profile's)"),
    "gm_chi_ppm": Factor(0.0, 0.035, "ppm", "cortex re CSF; Deistung et al. 2013 NeuroImage 65:299; " + _LI14),
    "wm_chi_ppm": Factor(-0.06, -0.01, "ppm", "white matter re CSF; " + _LI14),
    "ventricle_expansion": Factor(-0.05, 0.25, "fraction", "ventricles grow, faster after 60: Scahill et al. "
                                  "2003 Arch Neurol 60:989"),
    "csf_shell_mm": Factor(0.8, 4.5, "mm", "sulcal/subarachnoid CSF widens with age: Scahill et al. 2003"),
    "vein_oxygenation": Factor(0.55, 0.75, "fraction", "venous Y from phase: Fan et al. 2014 MRM 72:149"),
    "haematocrit": Factor(0.36, 0.48, "fraction", "adult clinical reference range (women-men)"),
    "vein_radius_mm": Factor(0.3, 1.5, "mm", "medullary to cortical/subependymal veins: Koopmans et al. "
                             "2008 MAGMA 21:149 (7 T venography); Okudera et al. 1999 Neuropathology 19:93"),
    "vein_turn_sd": Factor(0.15, 0.45, "rad/3 mm", "tortuosity (straight medullary to winding cortical)"),
    "vein_radial_share": Factor(0.2, 0.8, "fraction", "medullary veins run radially: Okudera et al. 1999"),
    "air_cavity_scale": Factor(0.6, 1.6, "x MNI size", "no single source: spans small to large "
                               "sinuses (each may also be absent, 10 %)"),
    "air_gap_mm": Factor(1.0, 4.0, "mm", "design choice: thin to thick skull base"),
    # ---- lesions
    "cmb_radius_mm": Factor(1.0, 5.0, "mm", "CMB 2-10 mm across on GRE: Greenberg et al. 2009 Lancet "
                            "Neurol 8:165 (skewed to small: Beta(1.3, 3.5))"),
    "cmb_chi_ppm": Factor(0.2, 2.0, "ppm", "Liu et al. 2012 Radiology 262:269 (CMB QSM)"),
    "iron_radius_mm": Factor(1.0, 4.0, "mm", "focal iron in the basal ganglia: Rashid et al. 2021 Sci Rep "
                             "11:14124"),
    "iron_excess_ppm": Factor(0.05, 0.35, "ppm", "design choice: added to the local "
                              "nuclear level (focal, not a level); 0.05 is about the smallest excess a "
                              "clinical QSM shows"),
    "calcification_chi_ppm": Factor(-0.8, -0.05, "ppm", "Chen et al. 2014 Radiology 270:496 (QSM of "
                                    "calcifications); Deistung et al. 2013"),
    "calcification_radius_mm": Factor(0.7, 4.0, "mm", "pineal/choroid/BG calcifications on CT"),
    # ---- acquisition
    "t2_inplane_mm": Factor(0.45, 1.0, "mm", "clinical TSE/FLAIR protocols"),
    "t2_slice_mm": Factor(1.0, 6.0, "mm", "3-D (1 mm) to 2-D thick-slice (5-6 mm) T2w"),
    "swi_inplane_mm": Factor(0.5, 1.0, "mm", _HAACKE09),
    "swi_slice_mm": Factor(1.0, 3.0, "mm", _HAACKE09),
    "t2_snr_wm": Factor(8, 50, "", "noisy clinical to averaged research scans"),
    "swi_snr_wm": Factor(8, 60, "", "noisy clinical to averaged research scans"),
    "t2_bias_strength": Factor(0.05, 0.6, "log-gain", "receive-coil shading"),
    "swi_bias_strength": Factor(0.05, 0.9, "log-gain", "up to 0.9 at 7 T (B1): Vaughan et al. 2001 MRM 46:24"),
    "background_field_ppm": Factor(0.05, 0.6, "ppm", "shim residuals; Schweser et al. 2017 NMR Biomed 30:e3604"),
    "swi_hpf_sigma_mm": Factor(2.0, 8.0, "mm", "homodyne high-pass filter width: Haacke et al. 2004 MRM 52:612"),
    "swi_phase_mask_power": Factor(2, 5, "", "Haacke et al. 2004 (4 optimal)"),
    "swi_minip_mm": Factor(4.0, 16.0, "mm", "minIP slab when used: " + _HAACKE09),
    "motion_line_fraction": Factor(0.02, 0.2, "fraction", "phase-encode lines moved (when there is motion, "
                                   "in 30 % of scans): Zaitsev et al. 2015 JMRI 42:887"),
    "motion_shift_mm": Factor(0.5, 3.0, "mm", "shift of the moved lines: Zaitsev et al. 2015"),
    "tkd_threshold": Factor(0.08, 0.3, "", "Shmueli et al. 2009 MRM 62:1510; Wharton et al. 2010 MRM 63:1292"),
    "tikhonov_lambda": Factor(0.005, 0.12, "", "closed-form L2: Bilgic et al. 2014 JMRI 40:181"),
    "qsm_mask_erosion_mm": Factor(0.0, 4.0, "mm", "brain-mask erosion of background removal (V-SHARP)"),
    "qsm_residual_background": Factor(0.0, 0.08, "fraction", "background field left by imperfect removal: "
                                      "Schweser et al. 2017 NMR Biomed 30:e3604"),
    "flair_csf_signal": Factor(0.02, 0.12, "x CSF TSE", "CSF nulled by inversion"),
}

#: field strengths and their share; SWI echo time range per field (s): Haacke 2009 (1.5 / 3 T),
#: Deistung et al. 2008 MRM 60:1155 (7 T)
B0_CHOICES = ((1.5, 0.3), (3.0, 0.55), (7.0, 0.15))
SWI_TE_S = {1.5: (0.030, 0.050), 3.0: (0.015, 0.030), 7.0: (0.008, 0.020)}
T2_VARIANTS = (("TSE", 0.7), ("FLAIR-like", 0.3))

#: deep-nucleus susceptibility (ppm re CSF) at 20 and at 90 years and the time constant of an
#: exponential-saturation approach (years): iron accumulates early in the pallidum and slowly,
#: nearly linearly, in the putamen; the thalamus plateaus by 40 (Hallgren & Sourander 1958,
#: J Neurochem 3:41; QSM curves of Li et al. 2014 and of Treit et al. 2021, Hum Brain Mapp
#: 42:4597, 498 subjects 5-90 years). Approximate read-offs.
NUCLEUS_LIFESPAN = {
    "globus-pallidus": (0.08, 0.22, 30.0),
    "putamen": (0.03, 0.10, 60.0),
    "caudate": (0.04, 0.08, 30.0),
    "thalamus": (0.015, 0.02, 15.0),
    "substantia-nigra": (0.09, 0.16, 30.0),
    "red-nucleus": (0.07, 0.14, 30.0),
    "dentate": (0.07, 0.15, 40.0),
}

#: between-subject spread of nuclear susceptibility (log-normal sd at 20 and at 90 years, shared and
#: per nucleus, clipped at 2.5 sd: a CV of ~10 % young to ~18 % old, as the scatter about the
#: curves of Li et al. 2014; it grows with age: Treit et al. 2021)
NUCLEUS_SPREAD_SD = (0.07, 0.13)

#: physiological calcification prevalence at 20 and at 90 years (Yalcin et al. 2016, J Chem
#: Neuroanat 78:20: pineal ~70 %, choroid plexus ~70 %, basal ganglia ~1 % of adults, all rising
#: with age). Basal-ganglia and other nuclei are over-sampled (x ~10) as hard negatives.
CALCIFICATION_PREVALENCE = {
    "calc-pineal": (0.45, 0.85),
    "calc-choroid": (0.35, 0.85),   # per side
    "calc-gp": (0.05, 0.2),
    "calc-nuclei": (0.05, 0.2),
    "calc-any": (0.05, 0.2),
}

#: microbleed sites and their Dirichlet weights (per-subject mixture)
CMB_SITES = ("lobar", "deep", "infratentorial", "juxtacortical", "perivenous", "intranuclear")
CMB_SITE_ALPHA = (3.0, 1.5, 1.0, 1.5, 1.0, 1.0)
#: nuclei that take focal iron deposits (blobs must fit inside)
IRON_NUCLEI = ("caudate", "putamen", "globus", "thalamus", "dentate")
#: lesion counts per subject (veins: density)
COUNTS = dict(DEFAULT_COUNTS, cmb=(0, 20), iron=(0, 5), vein=(4, 20))


#: the randomised profiles and their versions: ``randomised2`` draws every factor of ``randomised``
#: exactly as it does, then ``V2_FACTORS`` (and the seed of the texture's own random stream), so a
#: ``randomised2`` subject is the ``randomised`` subject of the same seed with these factors added;
#: ``randomised3`` likewise adds ``V3_FACTORS`` to ``randomised2``
RANDOMISED_PROFILES = {"randomised": 1, "randomised2": 2, "randomised3": 3}
V2_FACTORS = ("nucleus_texture", "nucleus_texture_mm")
#: drawn after ``V2_FACTORS`` by ``randomised3``: the ``randomised2`` subject of the same seed whose
#: nuclei are as dark on SWI and T2w per ppm as these factors say
V3_FACTORS = ("nucleus_r2s_per_ppm", "nucleus_t2_per_ppm")


def nucleus_chi_at_age(prefix: str, age: float) -> float:
    """Population-mean susceptibility (ppm) of a nucleus (``NUCLEUS_LIFESPAN`` key) at ``age``."""
    lo, hi, tau = NUCLEUS_LIFESPAN[prefix]
    f = (1.0 - np.exp(-(float(age) - 20.0) / tau)) / (1.0 - np.exp(-70.0 / tau))
    return float(lo + (hi - lo) * f)


def _u(rng, name):
    f = FACTORS[name]
    return float(rng.uniform(f.low, f.high))


def draw_factors(rng, pins: dict | None = None, version: int = 1) -> dict:
    """One subject's factors (``version`` 2: ``randomised2``, with ``V2_FACTORS`` drawn last; 3:
    ``randomised3``, ``V3_FACTORS`` after those). The
    number of draws is fixed, so a pin changes only its factor (and the factors derived from it,
    e.g. echo time from field strength)."""
    if version not in RANDOMISED_PROFILES.values():
        raise ValueError(f"unknown randomised profile version {version!r}")
    pins = dict(pins or {})
    out: dict = {}

    def put(name, value):
        out[name] = pins.pop(name) if name in pins else value
        return out[name]

    _draw_physiology(rng, put)
    _draw_acquisition(rng, put)
    if version >= 2:
        for name in V2_FACTORS:
            put(name, _u(rng, name))
        put("nucleus_texture_seed", int(rng.integers(2 ** 31)))
    if version >= 3:
        for name in V3_FACTORS:
            put(name, _u(rng, name))
    if pins:
        raise ValueError(f"unknown factor(s) {sorted(pins)}; expected some of {sorted(out)}")
    return out


def _draw_physiology(rng, put):
    age = put("age_years", _u(rng, "age_years"))
    a = (float(age) - 20.0) / 70.0
    sd = NUCLEUS_SPREAD_SD[0] + (NUCLEUS_SPREAD_SD[1] - NUCLEUS_SPREAD_SD[0]) * a
    shared = float(np.exp(np.clip(rng.normal(0, sd), -2.5 * sd, 2.5 * sd)))
    chi = {}
    for nuc in NUCLEI:
        own = float(np.exp(np.clip(rng.normal(0, sd), -2.5 * sd, 2.5 * sd)))
        for name, _ in nuc.instances():
            side = float(rng.uniform(0.97, 1.03))
            chi[name] = nucleus_chi_at_age(nuc.name, age) * shared * own * side
    put("nucleus_chi_ppm", chi)
    put("nucleus_heterogeneity", _u(rng, "nucleus_heterogeneity"))
    put("gm_chi_ppm", _u(rng, "gm_chi_ppm"))
    put("wm_chi_ppm", _u(rng, "wm_chi_ppm"))
    lo, hi = FACTORS["ventricle_expansion"].low, FACTORS["ventricle_expansion"].high
    put("ventricle_expansion", float(np.clip(-0.03 + 0.2 * a * a + rng.uniform(-0.04, 0.04), lo, hi)))
    lo, hi = FACTORS["csf_shell_mm"].low, FACTORS["csf_shell_mm"].high
    put("csf_shell_mm", float(np.clip(1.0 + 2.5 * a + rng.uniform(-0.5, 0.8), lo, hi)))
    y, hct = put("vein_oxygenation", _u(rng, "vein_oxygenation")), put("haematocrit", _u(rng, "haematocrit"))
    put("vein_chi_ppm", float(hct * 3.39 * (1.0 - y)))   # Spees et al. 2001 MRM 45:533: 3.39 ppm (SI)
    for name in ("vein_radius_mm", "vein_turn_sd", "vein_radial_share", "air_cavity_scale", "air_gap_mm"):
        put(name, _u(rng, name))
    sites = []
    for site, (p20, p90) in CALCIFICATION_PREVALENCE.items():
        for _ in range(2 if site == "calc-choroid" else 1):
            if rng.random() < p20 + (p90 - p20) * a:
                sites.append(site)
    put("calcification_sites", sites)


def _draw_acquisition(rng, put):
    fields, shares = zip(*B0_CHOICES)
    b0 = put("b0_tesla", float(rng.choice(fields, p=shares)))
    te = put("swi_echo_time_s", float(rng.uniform(*SWI_TE_S[min(SWI_TE_S, key=lambda f: abs(f - b0))])))
    put("swi_repetition_time_s", float(te + rng.uniform(0.008, 0.03)))
    put("swi_flip_angle_deg", float(rng.uniform(10, 25)))
    names, shares = zip(*T2_VARIANTS)
    variant = put("t2_variant", str(rng.choice(names, p=shares)))
    flair = variant != "TSE"
    put("t2_echo_time_s", float(rng.uniform(0.08, 0.14 if flair else 0.12)))
    put("t2_repetition_time_s", float(rng.uniform(7.0, 11.0) if flair else rng.uniform(3.0, 7.0)))
    ti = float(rng.uniform(2.0, 2.8))
    put("t2_inversion_time_s", ti if flair else None)
    put("flair_csf_signal", _u(rng, "flair_csf_signal"))
    for name in ("t2_inplane_mm", "t2_slice_mm", "swi_inplane_mm", "swi_slice_mm"):
        put(name, _u(rng, name))
    for name in ("t2_snr_wm", "swi_snr_wm", "t2_bias_strength", "background_field_ppm", "swi_hpf_sigma_mm",
                 "qsm_mask_erosion_mm", "qsm_residual_background"):
        put(name, _u(rng, name))
    for mod in ("t2", "swi"):
        frac, shift, moved = _u(rng, "motion_line_fraction"), _u(rng, "motion_shift_mm"), rng.random() < 0.3
        put(f"{mod}_motion_line_fraction", frac if moved else 0.0)
        put(f"{mod}_motion_shift_mm", shift if moved else 0.0)
    bias = _u(rng, "swi_bias_strength")
    put("swi_bias_strength", bias if b0 > 5 else min(bias, 0.6))
    put("swi_phase_mask_power", int(rng.integers(2, 6)))
    minip = _u(rng, "swi_minip_mm")
    put("swi_minip_mm", minip if rng.random() < 0.4 else 0.0)
    method = put("qsm_method", "TKD" if rng.random() < 0.45 else "Tikhonov")
    tkd, tik = _u(rng, "tkd_threshold"), _u(rng, "tikhonov_lambda")
    put("qsm_regularisation", tkd if method == "TKD" else tik)


def apply_physiology(head: dict, tissue: dict, f: dict) -> None:
    """Put the drawn physiology into :func:`~.head.draw_head`'s and :func:`~.head.draw_tissue`'s
    output (atrophy, CSF shell, tissue and nuclear susceptibility, FLAIR-like CSF)."""
    centre, sigma, _ = head["warp"]["expand"]
    head["warp"]["expand"] = (centre, sigma, float(f["ventricle_expansion"]))
    head["shell"]["csf_mm"] = float(f["csf_shell_mm"])
    head["params"].update({"ventricle_expansion": float(f["ventricle_expansion"]), "shell_mm": head["shell"]})
    tissue["chi"].update(gm=float(f["gm_chi_ppm"]), wm=float(f["wm_chi_ppm"]))
    tissue["nucleus_chi"] = {k: float(v) for k, v in f["nucleus_chi_ppm"].items()}
    tissue["nucleus_heterogeneity"] = float(f["nucleus_heterogeneity"])
    if float(f.get("nucleus_texture", 0.0)) > 0:
        tissue["nucleus_texture"] = (float(f["nucleus_texture"]), float(f["nucleus_texture_mm"]),
                                     int(f["nucleus_texture_seed"]))
    if "nucleus_r2s_per_ppm" in f:
        tissue["contrast"]["r2s"]["iron_per_ppm"] = float(f["nucleus_r2s_per_ppm"]) * float(f["b0_tesla"]) / 3.0
        tissue["contrast"]["t2"]["iron_k_per_ppm"] = float(f["nucleus_t2_per_ppm"])
    if f["t2_variant"] != "TSE":
        tissue["contrast"]["t2"]["csf"] = float(f["flair_csf_signal"])


def voxel_sizes(f: dict, preset: dict, native: bool) -> tuple:
    """T2w and SWI voxel sizes (mm). ``native`` (the full size) uses the drawn sizes; a coarse
    test preset maps them linearly onto its own ranges, so their order is kept."""
    out = []
    for mod in ("t2", "swi"):
        v = []
        for kind in ("inplane", "slice"):
            name = f"{mod}_{kind}_mm"
            lo, hi = preset[f"{mod}_{kind}"]
            fl, fh = FACTORS[name].low, FACTORS[name].high
            if native:
                v.append(float(f[name]))
            else:
                v.append(lo + (float(f[name]) - fl) / (fh - fl) * (hi - lo))
        out.append(np.array([v[0], v[0], v[1]]))
    return tuple(out)


def lesion_ranges(f: dict, user: dict | None = None) -> dict:
    """Physical lesion ranges for :func:`~.lesions.place_lesions` (user overrides win)."""
    out = dict(DEFAULT_RANGES)
    for key in ("cmb_radius_mm", "cmb_chi_ppm", "iron_radius_mm", "iron_excess_ppm", "calcification_chi_ppm",
                "calcification_radius_mm"):
        out[key] = (FACTORS[key].low, FACTORS[key].high)
    r = f["vein_radius_mm"]
    out["vein_radius_mm"] = (0.8 * r, 1.2 * r)
    out["vein_chi_ppm"] = (0.9 * f["vein_chi_ppm"], 1.1 * f["vein_chi_ppm"])
    out["vein_length_mm"] = (10.0, 60.0)
    out.update(user or {})
    return out


def lesion_counts(f: dict, user: dict | None = None) -> dict:
    """Count ranges: the profile's, calcifications from the drawn physiological sites."""
    out = dict(COUNTS)
    n_calc = len(f["calcification_sites"])
    out["calcification"] = (n_calc, n_calc)
    out.update(user or {})
    return out


def placement(f: dict, user_counts: dict | None = None) -> Placement:
    """Sites and shapes: all CMB sites, iron in every nucleus a blob fits, veins first."""
    own_calc = "calcification" not in (user_counts or {})
    return Placement(
        order=("vein", "iron", "cmb", "calcification"),
        iron_nuclei=IRON_NUCLEI, cmb_sites=CMB_SITES, cmb_site_alpha=CMB_SITE_ALPHA,
        cmb_radius_beta=(1.3, 3.5), cmb_lobulated_p=0.3, cmb_aniso=0.35,
        calc_sites=tuple(CALCIFICATION_PREVALENCE), calc_site_p=(0.25, 0.25, 0.2, 0.15, 0.15),
        calc_site_list=tuple(f["calcification_sites"]) if own_calc else None,
        vein_radial_p=f["vein_radial_share"], vein_turn_sd=f["vein_turn_sd"])
