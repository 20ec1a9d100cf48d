"""The whole chain on arrays: :func:`reconstruct` (MegreData -> field, local field, QSM, SWI).

Its options are one frozen :class:`QsmOptions`; the Pydra tasks call the same step functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from .background import DEFAULT_RADII_MM, vsharp
from .field import fit_field, hz_to_ppm
from .inversion import invert_dipole
from .mask import brain_mask, refine_mask
from .swi import clear_swi

__all__ = ["QsmOptions", "reconstruct"]


@dataclass(frozen=True)
class QsmOptions:
    """Choices of the QSM/SWI chain (defaults measured on the simulator, see benchmarks/bench_qsm.py)."""

    phase_sign: float = 1.0
    vsharp_radii_mm: tuple = DEFAULT_RADII_MM
    vsharp_threshold: float = 0.05
    method: str = "tv"              # "tv" (TV-ADMM) or "tkd"
    tv_lambda: float = 3e-4
    tv_iterations: int = 40
    swi_sigma_mm: float = 4.0
    swi_power: int = 4
    minip_mm: float = 0.0


def reconstruct(data, user_mask=None, options: QsmOptions = QsmOptions()) -> dict:
    """Run the chain on a :class:`~.bids.MegreData`; returns float32/bool arrays by name:
    ``mask``, ``field_hz``, ``field_ppm``, ``unwrapped``, ``local_ppm``, ``qsm_mask``, ``chi``,
    ``swi``, ``minip``, ``magnitude``."""
    vox = data.voxel_mm
    mask = brain_mask(data.magnitude, vox, user_mask)
    fit = fit_field(data.magnitude, data.phase, data.echo_times_s, mask, vox, options.phase_sign)
    if user_mask is None:
        mask = refine_mask(mask, fit["residual"])
    field_ppm = hz_to_ppm(fit["field_hz"], data.b0_tesla)
    local, qmask = vsharp(field_ppm, mask, vox, options.vsharp_radii_mm, options.vsharp_threshold)
    kw = {"lam": options.tv_lambda, "n_iter": options.tv_iterations} if options.method == "tv" else {}
    chi = invert_dipole(local, qmask, vox, data.affine, options.method, **kw)
    swi = clear_swi(data.magnitude, fit["field_hz"], mask, vox, data.echo_times_s, options.swi_sigma_mm,
                    options.swi_power, minip_mm=options.minip_mm, b0_tesla=data.b0_tesla)
    return {"mask": mask, "field_hz": fit["field_hz"], "field_ppm": field_ppm, "unwrapped": fit["unwrapped"],
            "local_ppm": local, "qsm_mask": qmask, "chi": chi, "swi": swi["swi"], "minip": swi["minip"],
            "magnitude": swi["magnitude"]}
