"""Pydra 1.0 tasks around the QSM/SWI functions: typed files in, BIDS-named files in the job folder out.

Chain: :class:`ReadMegre` -> :class:`EstimateField` -> :class:`RemoveBackground` ->
:class:`InvertDipole` (``_Chimap``), and :class:`ComputeSwi` (``_swi``, ``_minIP``) from the
magnitude and the field. Each task has a ``version`` input (the package version) so that a release
changes the hash. ``key`` is the subject prefix (``sub-01[_ses-A]``) used in the file names
(:data:`QSM_NAMES`).
"""

from __future__ import annotations

from pathlib import Path

from fileformats.medimage import NiftiGz
from pydra.compose import python

from deepmir_tasks import __version__

__all__ = ["QSM_NAMES", "ReadMegre", "EstimateField", "RemoveBackground", "InvertDipole", "ComputeSwi"]

#: output name -> file name template ({key} = sub-XX[_ses-YY]); all on the GRE grid
QSM_NAMES = {
    "magnitude": "{key}_part-mag_desc-echoes_MEGRE.nii.gz",
    "phase": "{key}_part-phase_desc-radians_MEGRE.nii.gz",
    "magnitude_rss": "{key}_part-mag_desc-rss_MEGRE.nii.gz",
    "fieldmap": "{key}_desc-ppm_fieldmap.nii.gz",
    "mask": "{key}_space-MEGRE_desc-brain_mask.nii.gz",
    "local_field": "{key}_desc-local_fieldmap.nii.gz",
    "qsm_mask": "{key}_space-MEGRE_desc-qsm_mask.nii.gz",
    "qsm": "{key}_Chimap.nii.gz",
    "swi": "{key}_swi.nii.gz",
    "minip": "{key}_desc-minIP_swi.nii.gz",
}


def _save(data, affine, name, key, dtype="float32"):
    import nibabel as nib
    import numpy as np

    path = Path.cwd() / QSM_NAMES[name].format(key=key)
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), affine), str(path))
    return path


def _volume(path):
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


@python.define
class ReadMegre(python.Task["ReadMegre.Outputs"]):
    """Read BIDS MEGRE magnitude and phase (per echo or 4-D) with their sidecars; phase to radians;
    also the echoes' root-sum-of-squares magnitude (3-D, for registration).

    Args:
        mag_files: ``*_part-mag_MEGRE.nii.gz`` files, in echo order
        phase_files: ``*_part-phase_MEGRE.nii.gz`` files (sidecars give EchoTime, MagneticFieldStrength)
        key: subject prefix for the file names
        phase_units: ``auto``, ``rad``, ``scanner`` or ``arbitrary``
        version: package version (part of the cache hash)
    """
    mag_files: list[NiftiGz]
    phase_files: list[NiftiGz]
    key: str = "sub-01"
    phase_units: str = "auto"
    version: str = __version__

    class Outputs(python.Outputs):
        magnitude: NiftiGz
        phase: NiftiGz
        magnitude_rss: NiftiGz
        echo_times_s: list[float]
        b0_tesla: float

    @staticmethod
    def function(mag_files, phase_files, key, phase_units, version):
        from deepmir_tasks.qsm.bids import load_megre

        import numpy as np

        d = load_megre([str(f) for f in mag_files], [str(f) for f in phase_files], phase_units)
        rss = np.sqrt((d.magnitude ** 2).sum(-1))   # 3-D, for registration to the T2w
        return (_save(d.magnitude, d.affine, "magnitude", key), _save(d.phase, d.affine, "phase", key),
                _save(rss, d.affine, "magnitude_rss", key), list(d.echo_times_s), d.b0_tesla)


@python.define
class EstimateField(python.Task["EstimateField.Outputs"]):
    """Brain mask (the given one, or the magnitude's refined by the fit) and the multi-echo field (ppm).

    Args:
        magnitude: 4-D magnitude (echoes last)
        phase: 4-D phase in radians
        echo_times_s: echo times (s)
        b0_tesla: field strength (T)
        mask_file: brain mask on the GRE grid (e.g. the T2w mask resampled), optional
        key: subject prefix for the file names
        phase_sign: +1 if the phase grows with a paramagnetic field, -1 otherwise
        version: package version (part of the cache hash)
    """
    magnitude: NiftiGz
    phase: NiftiGz
    echo_times_s: list[float]
    b0_tesla: float
    mask_file: NiftiGz | None = None
    key: str = "sub-01"
    phase_sign: float = 1.0
    version: str = __version__

    class Outputs(python.Outputs):
        fieldmap: NiftiGz
        mask: NiftiGz

    @staticmethod
    def function(magnitude, phase, echo_times_s, b0_tesla, mask_file, key, phase_sign, version):
        import numpy as np

        from deepmir_tasks.io import load_mask
        from deepmir_tasks.qsm.field import fit_field, hz_to_ppm
        from deepmir_tasks.qsm.mask import brain_mask, refine_mask

        mag, aff = _volume(magnitude)
        ph, _ = _volume(phase)
        vox = tuple(np.linalg.norm(aff[:3, :3], axis=0))
        user = None if mask_file is None else load_mask(mask_file, mag.shape[:3], "GRE grid")
        mask = brain_mask(mag, vox, user)
        fit = fit_field(mag, ph, echo_times_s, mask, vox, phase_sign)
        if user is None:
            mask = refine_mask(mask, fit["residual"])
        return (_save(hz_to_ppm(fit["field_hz"], b0_tesla), aff, "fieldmap", key),
                _save(mask, aff, "mask", key, "uint8"))


@python.define
class RemoveBackground(python.Task["RemoveBackground.Outputs"]):
    """V-SHARP background-field removal; the local field is valid in the eroded mask.

    Args:
        fieldmap: total field (ppm)
        mask_file: brain mask
        key: subject prefix for the file names
        radii_mm: SMV radii, largest first
        threshold: truncation of the deconvolution
        version: package version (part of the cache hash)
    """
    fieldmap: NiftiGz
    mask_file: NiftiGz
    key: str = "sub-01"
    radii_mm: list[float] = (12.0, 9.0, 6.0, 4.0, 2.5)
    threshold: float = 0.05
    version: str = __version__

    class Outputs(python.Outputs):
        local_field: NiftiGz
        qsm_mask: NiftiGz

    @staticmethod
    def function(fieldmap, mask_file, key, radii_mm, threshold, version):
        import numpy as np

        from deepmir_tasks.qsm.background import vsharp

        f, aff = _volume(fieldmap)
        m, _ = _volume(mask_file)
        local, qmask = vsharp(f, m > 0, tuple(np.linalg.norm(aff[:3, :3], axis=0)), tuple(radii_mm), threshold)
        return _save(local, aff, "local_field", key), _save(qmask, aff, "qsm_mask", key, "uint8")


@python.define
class InvertDipole(python.Task["InvertDipole.Outputs"]):
    """Dipole inversion to QSM in ppm (TV-ADMM, or TKD), B0 direction from the affine.

    Args:
        local_field: local field (ppm)
        mask_file: mask the local field is valid in
        key: subject prefix for the file names
        method: ``tv`` or ``tkd``
        tv_lambda: TV weight
        tv_iterations: ADMM iterations
        version: package version (part of the cache hash)
    """
    local_field: NiftiGz
    mask_file: NiftiGz
    key: str = "sub-01"
    method: str = "tv"
    tv_lambda: float = 3e-4
    tv_iterations: int = 40
    version: str = __version__

    class Outputs(python.Outputs):
        qsm: NiftiGz

    @staticmethod
    def function(local_field, mask_file, key, method, tv_lambda, tv_iterations, version):
        import numpy as np

        from deepmir_tasks.qsm.inversion import invert_dipole

        f, aff = _volume(local_field)
        m, _ = _volume(mask_file)
        kw = {"lam": tv_lambda, "n_iter": tv_iterations} if method == "tv" else {}
        chi = invert_dipole(f, m > 0, tuple(np.linalg.norm(aff[:3, :3], axis=0)), aff, method, **kw)
        return _save(chi, aff, "qsm", key)


@python.define
class ComputeSwi(python.Task["ComputeSwi.Outputs"]):
    """CLEAR-SWI-like SWI from the echoes' magnitude and the fitted field; optional minIP.

    Args:
        magnitude: 4-D magnitude (echoes last)
        fieldmap: field (ppm) from EstimateField
        mask_file: brain mask
        echo_times_s: echo times (s)
        b0_tesla: field strength (T)
        key: subject prefix for the file names
        sigma_mm: Gaussian high-pass width
        power: phase-mask power
        minip_mm: minIP slab (0: none; the minip output is then the SWI itself)
        version: package version (part of the cache hash)
    """
    magnitude: NiftiGz
    fieldmap: NiftiGz
    mask_file: NiftiGz
    echo_times_s: list[float]
    b0_tesla: float
    key: str = "sub-01"
    sigma_mm: float = 4.0
    power: int = 4
    minip_mm: float = 0.0
    version: str = __version__

    class Outputs(python.Outputs):
        swi: NiftiGz
        minip: NiftiGz

    @staticmethod
    def function(magnitude, fieldmap, mask_file, echo_times_s, b0_tesla, key, sigma_mm, power, minip_mm,
                 version):
        import numpy as np

        from deepmir_tasks.qsm.swi import clear_swi
        from deepmir_tasks.simulate.physics import GAMMA_MHZ_PER_T

        mag, aff = _volume(magnitude)
        f, _ = _volume(fieldmap)
        m, _ = _volume(mask_file)
        vox = tuple(np.linalg.norm(aff[:3, :3], axis=0))
        out = clear_swi(mag, f * np.float32(GAMMA_MHZ_PER_T * b0_tesla), m > 0, vox, echo_times_s, sigma_mm,
                        power, minip_mm=minip_mm, b0_tesla=b0_tesla)
        minip = out["minip"] if out["minip"] is not None else out["swi"]
        return _save(out["swi"], aff, "swi", key), _save(minip, aff, "minip", key)
