"""Pydra 1.0 tasks around the preprocessing functions: typed files in, files in the job folder out.

Each task has a ``version`` input defaulting to the package version: Pydra hashes a task's own
body, not the helpers it calls, so a new release must change the hash.
"""

from __future__ import annotations

from pathlib import Path

from fileformats.generic import File
from fileformats.medimage import NiftiGz
from pydra.compose import python

from deepmir_tasks import __version__

__all__ = ["CheckInputs", "N4BiasCorrect", "RegisterToTemplate", "ExtractBrain", "RegisterToT2", "AlignByHeader",
           "AlignQsm", "MakeGrid", "ResampleToGrid", "NormaliseIntensity", "WritePreprocReport"]


@python.define
class CheckInputs(python.Task["CheckInputs.Outputs"]):
    """Check the T2w, SWI and QSM present (and an optional brain mask); pass them through.

    Args:
        t2_file: T2-weighted image (None: a subject without a T2w)
        swi_file: SWI magnitude (None: a subject without an SWI)
        qsm_file: QSM map in ppm (None: a subject without a QSM); not all three None
        mask_file: the user's brain mask on the reference grid (the T2w's, else the SWI's, else the
            QSM's; optional)
        qsm_units: "auto" (the QSM must look like ppm), "ppm" (trusted), "ppb" (divided by 1000; the
            converted map is the qsm_file output)
        allow_resolution: run a resolution outside the supported range (flagged in the report)
        version: package version (part of the cache hash)
    """
    t2_file: NiftiGz | None = None
    swi_file: NiftiGz | None = None
    qsm_file: NiftiGz | None = None
    mask_file: NiftiGz | None = None
    qsm_units: str = "auto"
    allow_resolution: bool = False
    version: str = __version__

    class Outputs(python.Outputs):
        report: File
        t2_file: NiftiGz | None
        swi_file: NiftiGz | None
        qsm_file: NiftiGz | None
        mask_file: NiftiGz | None

    @staticmethod
    def function(t2_file, swi_file, qsm_file, mask_file, qsm_units, allow_resolution, version):
        from deepmir_tasks.io import write_json
        from deepmir_tasks.preprocess.checks import check_inputs

        checks = check_inputs(t2_file, swi_file, qsm_file, mask_file, qsm_units=qsm_units,
                              allow_resolution=allow_resolution, qsm_out=Path.cwd() / "qsm_ppm.nii.gz")
        report = write_json(checks, Path.cwd() / "checks.json")
        # the inputs pass through (the QSM converted to ppm if asked), so every later step waits for the checks
        qsm = Path(checks["qsm_file"]) if checks["qsm_file"] else None
        return report, t2_file, swi_file, qsm, mask_file


@python.define
class N4BiasCorrect(python.Task["N4BiasCorrect.Outputs"]):
    """N4 bias-field correction (ANTsPy); fit in ``mask_file`` or a rough Otsu head mask.

    Args:
        in_file: magnitude image (T2w or SWI; never QSM)
        mask_file: mask restricting the fit, on the same grid (optional)
        shrink_mm: approximate voxel size of N4's fitting grid
        version: package version (part of the cache hash)
    """
    in_file: NiftiGz
    mask_file: NiftiGz | None = None
    shrink_mm: float = 6.0
    version: str = __version__

    class Outputs(python.Outputs):
        out_file: NiftiGz
        bias_field: NiftiGz

    @staticmethod
    def function(in_file, mask_file, shrink_mm, version):
        from deepmir_tasks.preprocess.bias import n4_correct

        out, bias = Path.cwd() / "n4.nii.gz", Path.cwd() / "bias_field.nii.gz"
        n4_correct(in_file, out, mask_file=mask_file, bias_file=bias, shrink_mm=shrink_mm)
        return out, bias


@python.define
class RegisterToTemplate(python.Task["RegisterToTemplate.Outputs"]):
    """Affine registration of the reference image to the MNI152 2009a template (2 mm, Mattes MI).

    Args:
        t2_file: the reference image: the bias-corrected T2w, else SWI, else the QSM
        contrast: the reference's modality, "T2w", "SWI" or "QSM" (whose brain support is registered)
        version: package version (part of the cache hash)
    """
    t2_file: NiftiGz
    contrast: str = "T2w"
    version: str = __version__

    class Outputs(python.Outputs):
        t2_to_mni: File

    @staticmethod
    def function(t2_file, contrast, version):
        from deepmir_tasks.preprocess.template import register_to_template

        return register_to_template(t2_file, Path.cwd() / "t2_to_mni.txt", contrast=contrast)


@python.define
class ExtractBrain(python.Task["ExtractBrain.Outputs"]):
    """Brain mask of the reference image (MNI prior + intensity refinement; a QSM's support), or the
    user's mask passed through.

    Args:
        t2_file: the reference image: the bias-corrected T2w, else SWI, else the QSM
        t2_to_mni: RAS reference → MNI affine (text 4×4) from RegisterToTemplate
        mask_file: the user's own brain mask on the reference grid; when given it is used as is
        contrast: the reference's modality, "T2w", "SWI" or "QSM"
        version: package version (part of the cache hash)
    """
    t2_file: NiftiGz
    t2_to_mni: File
    mask_file: NiftiGz | None = None
    contrast: str = "T2w"
    version: str = __version__

    class Outputs(python.Outputs):
        mask: NiftiGz

    @staticmethod
    def function(t2_file, t2_to_mni, mask_file, contrast, version):
        from deepmir_tasks.preprocess.brain import extract_brain

        if mask_file is not None:
            return mask_file
        return extract_brain(t2_file, Path.cwd() / "brain_mask.nii.gz", t2_to_mni_file=t2_to_mni,
                             contrast=contrast)


@python.define
class RegisterToT2(python.Task["RegisterToT2.Outputs"]):
    """Rigid Mattes-MI registration of an image onto the T2w (ANTsPy); reuses a same-session transform.

    Args:
        moving_file: SWI magnitude or QSM
        t2_file: bias-corrected T2w
        mask_file: T2w brain mask restricting the metric (optional)
        same_session_file: an image already registered (e.g. the SWI); if the moving image lies in
            its scanner space (same grid, or its own grid over the same place), same_session_transform
            is reused
        same_session_transform: that image's transform
        preset: registration settings ("fast", "quick", "accurate")
        what: the moving image's role in messages ("SWI", "QSM")
        t2_source: the user's T2w that t2_file was made from, named in messages (default t2_file)
        version: package version (part of the cache hash)

    Outputs ``transform`` and ``qc``, the alignment check's measurements (a registration that cannot
    be right fails with one line naming the file at fault: a rotated header the moving image, a
    mirrored one the T2w).
    """
    moving_file: NiftiGz
    t2_file: NiftiGz
    mask_file: NiftiGz | None = None
    same_session_file: NiftiGz | None = None
    same_session_transform: File | None = None
    preset: str = "fast"
    what: str = "SWI"
    t2_source: NiftiGz | None = None
    version: str = __version__

    class Outputs(python.Outputs):
        transform: File
        qc: dict

    @staticmethod
    def function(moving_file, t2_file, mask_file, same_session_file, same_session_transform, preset, what,
                 t2_source, version):
        from deepmir_tasks.io import as_path
        from deepmir_tasks.preprocess.register import register_to_t2

        return register_to_t2(moving_file, t2_file, Path.cwd() / "to_t2.mat", mask_file=mask_file,
                              same_session_file=same_session_file,
                              same_session_transform=same_session_transform, preset=preset, what=what,
                              t2_source=as_path(t2_source))


@python.define
class AlignByHeader(python.Task["AlignByHeader.Outputs"]):
    """The identity transform of an image onto the reference, by its header (one scanner space):
    the reference itself, or a QSM in the scanner space of an SWI that is the reference.

    Args:
        moving_file: the image (a QSM, or the reference image itself)
        reference_file: the reference image
        what: the moving image's role in messages ("QSM", "SWI")
        reference: the reference's role in messages ("T2w", "SWI", "QSM")
        version: package version (part of the cache hash)

    Outputs ``transform`` and ``qc`` (``{"aligned_by": "header", "overlap": ...}``); fails naming
    the moving file when the two do not cover one place in scanner space.
    """
    moving_file: NiftiGz
    reference_file: NiftiGz
    what: str = "QSM"
    reference: str = "T2w"
    version: str = __version__

    class Outputs(python.Outputs):
        transform: File
        qc: dict

    @staticmethod
    def function(moving_file, reference_file, what, reference, version):
        from deepmir_tasks.preprocess.reference import align_by_header

        return align_by_header(moving_file, reference_file, Path.cwd() / "to_reference.mat", what=what,
                               reference=reference)


@python.define
class AlignQsm(python.Task["AlignQsm.Outputs"]):
    """A QSM onto the reference without an SWI to register it by: by its brain support registered
    rigidly to the reference's brain mask, or by its header when that registration barely moves it
    (:func:`deepmir_tasks.preprocess.reference.align_qsm`).

    Args:
        moving_file: the QSM
        reference_file: the reference image (T2w)
        mask_file: the reference's brain mask, on the reference grid
        reference: the reference's role in messages ("T2w")
        preset: rigid registration preset of :data:`deepmir_tasks.preprocess.register.RIGID_PRESETS`
        version: package version (part of the cache hash)

    Outputs ``transform`` and ``qc`` (``{"aligned_by": "header" | "support", "support_dice": ...,
    "displacement_mm": ...}``); fails naming the QSM when its support does not fit the brain mask.
    """
    moving_file: NiftiGz
    reference_file: NiftiGz
    mask_file: NiftiGz
    reference: str = "T2w"
    preset: str = "fast"
    version: str = __version__

    class Outputs(python.Outputs):
        transform: File
        qc: dict

    @staticmethod
    def function(moving_file, reference_file, mask_file, reference, preset, version):
        from deepmir_tasks.preprocess.reference import align_qsm

        return align_qsm(moving_file, reference_file, mask_file, Path.cwd() / "to_reference.mat",
                         reference=reference, preset=preset)


@python.define
class MakeGrid(python.Task["MakeGrid.Outputs"]):
    """The working grid: the reference's space at voxel_size mm, cropped to the brain + margin_mm.

    Args:
        t2_file: the reference image, the T2w, else SWI, else QSM (defines axes and world coordinates)
        mask_file: brain mask on the reference grid (defines the crop)
        voxel_size: isotropic voxel size in mm
        margin_mm: margin around the brain's bounding box
        version: package version (part of the cache hash)
    """
    t2_file: NiftiGz
    mask_file: NiftiGz | None = None
    voxel_size: float = 1.0
    margin_mm: float = 8.0
    version: str = __version__

    class Outputs(python.Outputs):
        grid: NiftiGz

    @staticmethod
    def function(t2_file, mask_file, voxel_size, margin_mm, version):
        from deepmir_tasks.preprocess.resample import make_grid

        return make_grid(t2_file, Path.cwd() / "grid.nii.gz", mask_file=mask_file,
                         voxel_size=voxel_size, margin_mm=margin_mm)


@python.define
class ResampleToGrid(python.Task["ResampleToGrid.Outputs"]):
    """Resample an image into a reference grid, optionally through a transform.

    Args:
        in_file: image to resample
        reference_file: grid to resample into
        transform_file: ANTs transform from RegisterToT2 (optional)
        interpolation: "bspline" (default), "lanczos", "linear" or "nearest"
        mask_file: brain mask on the reference grid; fail if the image covers less than
            min_coverage of it
        min_coverage: fraction of the brain that must lie inside the image's field of view
        version: package version (part of the cache hash)
    """
    in_file: NiftiGz
    reference_file: NiftiGz
    transform_file: File | None = None
    interpolation: str = "bspline"
    mask_file: NiftiGz | None = None
    min_coverage: float = 0.9
    version: str = __version__

    class Outputs(python.Outputs):
        out_file: NiftiGz

    @staticmethod
    def function(in_file, reference_file, transform_file, interpolation, mask_file, min_coverage, version):
        from deepmir_tasks.preprocess.resample import resample_to_grid

        return resample_to_grid(in_file, reference_file, Path.cwd() / "resampled.nii.gz",
                                transform_file=transform_file, interpolation=interpolation,
                                mask_file=mask_file, min_coverage=min_coverage)


@python.define
class NormaliseIntensity(python.Task["NormaliseIntensity.Outputs"]):
    """Robust z-score in the brain (kind="zscore": T2w, SWI) or clipped ppm (kind="qsm").

    Args:
        in_file: image on the mask's grid
        mask_file: brain mask
        kind: "zscore" or "qsm"
        version: package version (part of the cache hash)
    """
    in_file: NiftiGz
    mask_file: NiftiGz
    kind: str = "zscore"
    version: str = __version__

    class Outputs(python.Outputs):
        out_file: NiftiGz

    @staticmethod
    def function(in_file, mask_file, kind, version):
        from deepmir_tasks.preprocess.normalise import normalise_intensity

        return normalise_intensity(in_file, mask_file, Path.cwd() / "normalised.nii.gz", kind=kind)


@python.define
class WritePreprocReport(python.Task["WritePreprocReport.Outputs"]):
    """JSON report of a preprocessed subject: the input checks, settings, grid, coverage and transforms.

    Args:
        checks: JSON from CheckInputs
        mask_file: brain mask in the working grid
        swi_file: the SWI input (for its field of view; None without an SWI)
        qsm_file: the QSM input
        swi_to_t2: SWI transform to the reference (None without an SWI)
        qsm_to_t2: QSM transform to the reference
        reference: the reference's modality key ("t2", "swi", "qsm"): the report's ``space``
        swi_qc, qsm_qc: the registrations' alignment checks (RegisterToT2's qc)
        t2_to_mni: T2w → MNI affine (text)
        user_mask: the user's own brain mask, if one was given
        interpolation, registration, voxel_size, margin_mm: the settings the subject was run with
        version: package version (part of the cache hash)
    """
    checks: File
    mask_file: NiftiGz
    swi_file: NiftiGz | None = None
    qsm_file: NiftiGz | None = None
    swi_to_t2: File | None = None
    qsm_to_t2: File | None = None
    t2_to_mni: File
    reference: str = "t2"
    user_mask: NiftiGz | None = None
    swi_qc: dict | None = None
    qsm_qc: dict | None = None
    interpolation: str = "bspline"
    registration: str = "fast"
    voxel_size: float = 1.0
    margin_mm: float = 8.0
    version: str = __version__

    class Outputs(python.Outputs):
        report: File

    @staticmethod
    def function(checks, mask_file, swi_file, qsm_file, swi_to_t2, qsm_to_t2, t2_to_mni, reference, user_mask,
                 swi_qc, qsm_qc, interpolation, registration, voxel_size, margin_mm, version):
        from deepmir_tasks.preprocess.pipeline import summarise

        settings = {"interpolation": interpolation, "registration_preset": registration,
                    "voxel_size_mm": float(voxel_size), "margin_mm": float(margin_mm)}
        return summarise(checks, mask_file, swi_file, qsm_file, swi_to_t2, qsm_to_t2, t2_to_mni,
                         Path.cwd() / "report.json", user_mask=user_mask, settings=settings,
                         registration_qc={"swi": swi_qc, "qsm": qsm_qc}, reference=reference)
