"""Brain extraction on the T2w, offline: MNI brain prior through the affine, trimmed by intensity.

1. The MNI152 brain (envelope of grey and white matter, see
   :func:`deepmir_tasks.preprocess.template.mni_t2_template`) is carried into the T2w grid through
   the affine T2w → MNI registration that the pipeline needs anyway (``t2_to_mni``).
2. ``prior > 0.5`` is trimmed of skull-dark voxels, reduced to its largest part and hole-filled.

Measured (Dice against the simulator's brain mask; the simulated heads carry a random 1.5-3.5 mm
non-linear warp that the affine cannot follow): 0.968-0.991 (median 0.984) on 12 small subjects
(3 × 3 × 6 mm voxels) and 0.985 on a full-size one. The simulator builds its heads from the same
MNI maps, so the heads were also deformed by an extra random smooth warp of 4-6 mm that neither the
simulator nor the template knows (``benchmarks/bench_preprocess.py --warp-eval``, seeds 11, 13,
17): 0.972-0.982 with 4 mm, 0.949-0.972 with 6 mm (0.986-0.987 without).
Growing the mask by intensity into the bright CSF rim lowered Dice (0.89-0.94): it is not grown.
A subject without a T2w gets its mask from its SWI (the prior untrimmed: microbleeds are dark on
SWI) or its QSM (the map's support). ``benchmarks/bench_reference_mask.py`` on six small simulated
subjects (seeds 11-16): Dice median 0.975 (min 0.959) from the SWI and 0.950 (0.944) from the QSM,
against 0.985 (0.975) from the T2w; all 38 true CMBs and iron deposits lay inside each mask (the
T2w's dark-voxel trim applied to the SWI left 3 of 19 outside on seeds 11-12).
A user's own mask can be passed to the pipeline instead (``mask_file``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir_tasks.io import load_image, save_nifti

__all__ = ["brain_prior", "refine_brain_mask", "extract_brain", "dice"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (1.0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * np.count_nonzero(a & b) / s) if s else 1.0


def brain_prior(t2_img, t2_to_mni: np.ndarray) -> np.ndarray:
    """MNI brain probability resampled (linear) onto the T2w grid through the RAS ``t2_to_mni`` affine."""
    from scipy import ndimage

    from deepmir_tasks.preprocess.template import mni_t2_template

    _, prob = mni_t2_template(2.0)
    # T2 voxel -> T2 world -> MNI world -> template voxel
    vox = np.linalg.inv(prob.affine) @ np.asarray(t2_to_mni, float) @ t2_img.affine
    return ndimage.affine_transform(np.asarray(prob.dataobj, np.float32), vox[:3, :3], vox[:3, 3],
                                    output_shape=t2_img.shape[:3], order=1, mode="constant", cval=0.0)


def refine_brain_mask(data: np.ndarray, prior: np.ndarray, *, dark_fraction: float = 0.45) -> np.ndarray:
    """Brain mask from the warped prior: ``prior > 0.5`` without skull-dark voxels, largest part, filled.

    "Dark" is below ``dark_fraction`` × the 2nd percentile of the intensities where the prior is
    above 0.9 (the darkest brain tissue). This only trims a prior that leaks into the skull; it does
    not grow the mask into the bright CSF rim, which a brain mask here excludes.
    """
    from scipy import ndimage

    core = prior > 0.9
    mask = prior > 0.5
    if not core.any():
        return mask
    dark = dark_fraction * float(np.percentile(data[core], 2))
    mask &= data > dark
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(np.ones(labels.shape), labels, range(1, n + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def extract_brain(t2_file, out_file, *, t2_to_mni_file=None, prob_file=None, contrast: str = "T2w") -> Path:
    """Brain mask (uint8) of a bias-corrected reference image; computes the MNI affine itself if
    not given.

    ``contrast`` is the reference's: ``T2w`` (the MNI prior trimmed of skull-dark voxels), ``SWI``
    (the MNI prior untrimmed: microbleeds are dark on SWI), or ``QSM``, whose brain is the support of the map
    (:func:`~deepmir_tasks.preprocess.template.qsm_support`: toolboxes zero the QSM outside their
    brain mask; the signed values cannot be trimmed by darkness).
    """
    from deepmir_tasks.preprocess.template import qsm_support, read_matrix, register_to_template

    img = load_image(t2_file, what=contrast)
    data = np.asarray(img.dataobj, np.float32)
    if contrast == "QSM":
        mask = qsm_support(data)
        if prob_file is not None and t2_to_mni_file is not None:
            save_nifti(brain_prior(img, read_matrix(t2_to_mni_file)).astype(np.float32), img.affine, prob_file,
                       dtype=np.float32)
        return save_nifti(mask.astype(np.uint8), img.affine, out_file, dtype=np.uint8)
    if t2_to_mni_file is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            m = read_matrix(register_to_template(t2_file, Path(tmp) / "t2_to_mni.txt", contrast=contrast))
    else:
        m = read_matrix(t2_to_mni_file)
    prior = brain_prior(img, m)
    # microbleeds are dark on SWI: trimming dark voxels would cut those at the brain's edge out of
    # the mask (3 of 19 on two small simulated subjects; none of 38 on six untrimmed), so an SWI
    # keeps the whole prior
    mask = refine_brain_mask(data, prior, dark_fraction=0.0 if contrast == "SWI" else 0.45)
    if prob_file is not None:
        save_nifti(prior.astype(np.float32), img.affine, prob_file, dtype=np.float32)
    return save_nifti(mask.astype(np.uint8), img.affine, out_file, dtype=np.uint8)
