"""Raw multi-echo GRE of a simulated subject's own head: the magnitude and wrapped phase of each echo.

:func:`~deepmir_tasks.simulate.subject.simulate_subject` (``megre=True``) calls :func:`echo_signals`
with what its single-echo GRE was made from (the susceptibility's field on the fine grid with the
background and air-cavity fields, the magnitude, the receive bias and the noise level), so that
the echoes show the same head, lesions and field as the subject's SWI and QSM. Per echo ``TE``:

    signal = M(TE_swi) exp(-(TE - TE_swi) R2*) exp(i (phi0 + 2 pi gamma B0 TE field)),

averaged over the fine voxels in each acquisition voxel (intravoxel dephasing), times the bias,
plus complex Gaussian noise; ``phi0`` is a constant plus a smooth transmit/receive phase offset.
R2* is the tissue's (fraction-weighted, deep-nuclei iron included) with each lesion's extra decay
``-ln(gre_factor) / TE_swi`` (its single-echo darkening, growing with TE). Motion ringing, which
the randomised profile may put on the SWI, is not applied to the echoes. The draws come from their
own random stream, so a subject's other images are the same with or without its echoes.
"""

from __future__ import annotations

import numpy as np

from .physics import SmoothField, block_mean, phase_rad_per_ppm

__all__ = ["ECHO_FRACTIONS", "echo_times", "echo_signals"]

#: echo times as fractions of the subject's SWI echo time (4 echoes spanning it, as a typical
#: multi-echo QSM protocol does)
ECHO_FRACTIONS = (0.3, 0.65, 1.0, 1.35)


def echo_times(te_swi: float) -> list[float]:
    """The echo times (s) of a subject whose SWI echo time is ``te_swi``."""
    return [round(float(te_swi) * f, 5) for f in ECHO_FRACTIONS]


def _complex(mag, phase) -> np.ndarray:
    out = np.empty(mag.shape, np.complex64)
    out.real = mag * np.cos(phase)
    out.imag = mag * np.sin(phase)
    return out


def echo_signals(rng, times_s, te_ref: float, b0: float, fine: dict, outer: dict, bias: np.ndarray,
                 sigma: float, head_centre, swi_affine) -> dict:
    """Magnitude and wrapped phase (x, y, z, echo) on the acquisition grid.

    ``fine``: ``field`` (total field, ppm), ``mag`` (magnitude at ``te_ref``), ``r2s`` (1/s),
    ``affine``, ``ss`` (fine voxels per acquisition voxel) and ``box`` (the acquisition voxels it
    covers); ``outer``: ``mag``, ``field`` and ``r2s`` on the whole acquisition grid (used outside
    the box). ``bias`` multiplies the signal; ``sigma`` is the noise per channel.
    """
    offset = SmoothField(rng, head_centre, 3, (200.0, 400.0))
    phi0 = np.float32(rng.uniform(-np.pi, np.pi))
    off_fine = phi0 + np.float32(1.5) * offset(fine["field"].shape, fine["affine"])
    off_outer = phi0 + np.float32(1.5) * offset(outer["mag"].shape, swi_affine)
    mags, phases = [], []
    for te in times_s:
        k = np.float32(phase_rad_per_ppm(b0, te))
        dt = np.float32(te - te_ref)
        sig_f = _complex(fine["mag"] * np.exp(-dt * fine["r2s"]), k * fine["field"] + off_fine)
        signal = _complex(outer["mag"] * np.exp(-dt * outer["r2s"]), k * outer["field"] + off_outer)
        signal[fine["box"]] = block_mean(sig_f, fine["ss"]).astype(np.complex64)
        del sig_f
        signal *= bias
        signal.real += np.float32(sigma) * rng.standard_normal(signal.shape, np.float32)
        signal.imag += np.float32(sigma) * rng.standard_normal(signal.shape, np.float32)
        mags.append(np.abs(signal).astype(np.float32))
        phases.append(np.angle(signal).astype(np.float32))
    return {"magnitude": np.stack(mags, axis=-1), "phase": np.stack(phases, axis=-1),
            "echo_times_s": [float(t) for t in times_s], "b0_tesla": float(b0)}
