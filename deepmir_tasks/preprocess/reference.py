"""The reference space of a subject with a subset of T2w, SWI and QSM, and alignment by header.

A subject is processed in the space of its T2w, else its SWI, else its QSM
(:func:`deepmir_tasks.bids_names.reference_modality`). The SWI is registered onto a T2w by mutual
information (:mod:`deepmir_tasks.preprocess.register`), and a QSM in the SWI's scanner space shares
the SWI's transform. A QSM is never registered alone by its intensities: its signed values match
no magnitude image well. Without an SWI to register it by, a QSM is aligned to the T2w **by its
header** (identity in scanner coordinates: the two come from one session), which
:func:`align_by_header` allows only when the two images cover one place in scanner space; and the
reference image itself gets the identity, so that every image has a transform to the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmir_tasks.io import InputError, load_image

__all__ = ["MIN_HEADER_OVERLAP", "align_by_header", "identity_transform", "world_overlap"]

#: the smallest fraction of the smaller image's scanner-space box that must overlap the other's for
#: the two to be aligned by their headers
MIN_HEADER_OVERLAP = 0.5


def identity_transform(out_file) -> Path:
    """Write the identity as an ANTs/ITK affine ``.mat`` (moving world = reference world)."""
    from deepmir_tasks.preprocess._ants import write_affine_transform

    return write_affine_transform(np.eye(4), out_file)


def world_overlap(img_a, img_b) -> float:
    """Fraction of the smaller image's scanner-space box (axis-aligned, voxel edges) inside the
    other's (0 when they do not meet)."""
    boxes = []
    for img in (img_a, img_b):
        shape = np.asarray(img.shape[:3], float)
        corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                            for k in (-0.5, shape[2] - 0.5)])
        world = corners @ img.affine[:3, :3].T + img.affine[:3, 3]
        boxes.append((world.min(axis=0), world.max(axis=0)))
    lo, hi = np.maximum(boxes[0][0], boxes[1][0]), np.minimum(boxes[0][1], boxes[1][1])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    smaller = min(float(np.prod(b[1] - b[0])) for b in boxes)
    return inter / smaller if smaller > 0 else 0.0


def align_by_header(moving_file, reference_file, out_file, *, what: str = "QSM",
                    reference: str = "T2w") -> tuple[Path, dict]:
    """The identity transform from ``moving_file`` to ``reference_file`` (their headers place them
    in one scanner space), after checking that the two cover one place: at least
    :data:`MIN_HEADER_OVERLAP` of the smaller one's box. Raises :class:`InputError` naming
    ``moving_file`` when they do not. Returns the transform and ``{"aligned_by": "header", ...}``."""
    if Path(str(moving_file)) != Path(str(reference_file)):
        overlap = world_overlap(load_image(moving_file, what=what, allow_empty=True),
                                load_image(reference_file, what=reference, allow_empty=True))
        if overlap < MIN_HEADER_OVERLAP:
            raise InputError(moving_file, f"{what} overlaps the {reference} in scanner space by only "
                                          f"{overlap:.0%} of its field of view, and there is no SWI to register "
                                          f"it by (a {what} is not registered by its signed values); give the "
                                          "SWI, or a QSM from the same session")
    else:
        overlap = 1.0
    return identity_transform(out_file), {"aligned_by": "header", "overlap": round(overlap, 3)}
