"""Acquisition and population settings of the independent generator, one frozen record per condition.

Every number here was chosen for this generator from the literature, not copied from DEEPMIR's
own simulator. A :class:`Condition` fixes the ranges; :func:`draw_protocol` draws one subject's
values from them with its own random generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["ABLATIONS", "Condition", "add_ablation_arguments", "ablation_flags", "ablation_overrides", "check_ablations", "CONDITIONS", "get_condition", "draw_protocol"]


@dataclass(frozen=True)
class Condition:
    """Ranges of one stress condition (``(low, high)`` pairs are drawn uniformly)."""

    name: str
    b0_tesla: float = 3.0
    # SWI/QSM GRE: echo time (s), voxel (mm, x y z); 3 T clinical SWI uses TE 20-25 ms
    # (Haacke et al. 2009 AJNR 30:19), in-plane 0.5-1 mm, slices 1-2 mm
    gre_te_s: tuple = (0.018, 0.025)
    swi_voxel_mm: tuple = (0.6, 0.6, 1.5)
    gre_2d: bool = False
    # T2w turbo spin echo: TE 80-110 ms, TR 4-6 s, 0.9 x 0.9 x 3 mm typical clinical protocol
    t2_te_s: tuple = (0.080, 0.110)
    t2_tr_s: tuple = (4.0, 6.0)
    t2_voxel_mm: tuple = (0.9, 0.9, 3.0)
    # signal-to-noise ratio of white matter on the magnitude images
    snr_swi: tuple = (25.0, 45.0)
    snr_t2: tuple = (20.0, 35.0)
    # population: age (years) and a multiplier on the age curve of nuclear iron
    age_years: tuple = (45.0, 85.0)
    nuclear_iron_factor: tuple = (0.85, 1.15)
    # fine-grained susceptibility texture within the deep nuclei: relative SD of a field smoothed
    # at 2 mm (iron is not uniform within a nucleus: Hallgren & Sourander 1958 sampled pallidal
    # and putaminal iron unevenly; within-nucleus QSM SDs of several hundredths of a ppm in the
    # pallidum are typical of in vivo ROI reports). Not drawn, so 0 (``--nucleus-texture 0``)
    # gives the same subjects with uniform nuclei: an ablation.
    nucleus_texture: float = 0.12
    # R2* of the nuclei's iron as a multiple of this generator's law for paramagnetic tissue
    # (physics._R2S_PER_PPM_3T); lesions keep the law. Not drawn: another value gives the same
    # subjects with darker (> 1) nuclei on the GRE magnitude and SWI, an ablation.
    nucleus_r2s_scale: float = 1.0
    # QSM reconstruction: fraction of the background field left after background removal,
    # amplitude (ppm) of a smooth polynomial residual, TKD threshold
    residual_background: tuple = (0.0, 0.0)
    residual_poly_ppm: tuple = (0.0, 0.0)
    tkd_threshold: tuple = (0.15, 0.22)
    tikhonov_lambda: tuple = (0.01, 0.03)
    qsm_methods: tuple = ("TKD", "Tikhonov")
    # SWI phase-mask power: 4 is the common choice (Haacke et al. 2004 MRM 52:612)
    phase_mask_power: tuple = (3, 4, 5)


#: fields of a condition that are not drawn and can be changed on the same seeds (the same heads and
#: lesions): name -> (folder tag, help); every value must be at least 0
ABLATIONS = {
    "nucleus_texture": ("texture", "relative SD of the fine texture of nuclear iron (default: the condition's, "
                        "0.12; 0 gives the same subjects with uniform nuclei)"),
    "nucleus_r2s_scale": ("r2s", "R2* of nuclear iron as a multiple of the generator's law (default 1, 28 /s per ppm "
                          "at 3 T; 5 gives 140, nuclei much darker on the GRE magnitude and SWI)"),
}

_DEFAULT = Condition("default")

CONDITIONS: dict = {c.name: c for c in (
    _DEFAULT,
    # nuclear iron at the top of the lifespan range: Li et al. 2014 (Hum Brain Mapp 35:2698)
    # report the globus pallidus near 0.2 ppm after 70 years; the factor takes it to 0.22-0.26 ppm
    replace(_DEFAULT, name="old_high_iron", age_years=(78.0, 92.0), nuclear_iron_factor=(1.15, 1.3)),
    # 1.5 T with a 2-D GRE and 3 mm slices: longer TE (40 ms) to keep phase contrast, less SNR
    replace(_DEFAULT, name="1p5T_2d_thick", b0_tesla=1.5, gre_te_s=(0.035, 0.045),
            swi_voxel_mm=(0.9, 0.9, 3.0), gre_2d=True, snr_swi=(18.0, 30.0), snr_t2=(15.0, 25.0)),
    # 7 T: short TE (Deistung et al. 2013 NeuroImage 65:299 used ~ 10-15 ms), finer voxels, more SNR
    replace(_DEFAULT, name="7T", b0_tesla=7.0, gre_te_s=(0.010, 0.015), swi_voxel_mm=(0.5, 0.5, 1.0),
            snr_swi=(35.0, 60.0)),
    replace(_DEFAULT, name="thick_t2", t2_voxel_mm=(0.9, 0.9, 6.0)),
    replace(_DEFAULT, name="noisy", snr_swi=(8.0, 12.0), snr_t2=(7.0, 10.0)),
    # imperfect background-field removal (5-12 % of the background left, Schweser et al. 2017
    # NMR Biomed 30:e3604 show residuals of this order near air-tissue interfaces) and a low TKD
    # threshold that streaks
    replace(_DEFAULT, name="bad_background", residual_background=(0.05, 0.12),
            residual_poly_ppm=(0.03, 0.06), tkd_threshold=(0.06, 0.09), qsm_methods=("TKD",)),
)}


def get_condition(name: str) -> Condition:
    """The condition called ``name``; a ValueError naming the choices otherwise."""
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; choose one of {', '.join(CONDITIONS)}") from None


def check_ablations(overrides: dict) -> dict:
    """``overrides`` (name -> value) if every name is in :data:`ABLATIONS` and every value at least 0;
    a ValueError naming the first that is not."""
    for name, value in overrides.items():
        if name not in ABLATIONS:
            raise ValueError(f"{name!r} cannot be overridden; choose among {', '.join(ABLATIONS)}")
        if not float(value) >= 0:
            raise ValueError(f"{name} must be at least 0, got {value}")
    return overrides


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_ablation_arguments(parser) -> None:
    """One ``--<field>`` option per :data:`ABLATIONS` entry (default None: the condition's value)."""
    for name, (_, text) in ABLATIONS.items():
        parser.add_argument(_flag(name), type=float, default=None, help=text)


def ablation_overrides(args) -> dict:
    """The ablations given on the command line parsed by :func:`add_ablation_arguments`."""
    return {k: getattr(args, k) for k in ABLATIONS if getattr(args, k) is not None}


def ablation_flags(overrides: dict) -> list:
    """``overrides`` as command-line arguments of ``python -m benchmarks.independent_sim``."""
    return [x for k, v in overrides.items() for x in (_flag(k), v)]


def draw_protocol(cond: Condition, rng: np.random.Generator) -> dict:
    """One subject's acquisition and population values, drawn from ``cond``'s ranges."""
    u = lambda pair: float(rng.uniform(*pair))  # noqa: E731
    method = str(rng.choice(cond.qsm_methods))
    return {
        "condition": cond.name,
        "b0_tesla": cond.b0_tesla,
        "gre_te_s": u(cond.gre_te_s),
        "swi_voxel_mm": tuple(cond.swi_voxel_mm),
        "gre_2d": cond.gre_2d,
        "t2_te_s": u(cond.t2_te_s),
        "t2_tr_s": u(cond.t2_tr_s),
        "t2_voxel_mm": tuple(cond.t2_voxel_mm),
        "snr_swi": u(cond.snr_swi),
        "snr_t2": u(cond.snr_t2),
        "age_years": u(cond.age_years),
        "nuclear_iron_factor": u(cond.nuclear_iron_factor),
        "nucleus_texture": float(cond.nucleus_texture),
        "nucleus_r2s_scale": float(cond.nucleus_r2s_scale),
        "residual_background": u(cond.residual_background),
        "residual_poly_ppm": u(cond.residual_poly_ppm),
        "qsm_method": method,
        "qsm_regularisation": u(cond.tkd_threshold if method == "TKD" else cond.tikhonov_lambda),
        "phase_mask_power": int(rng.choice(cond.phase_mask_power)),
    }
