"""Pictures for the QC reports: slices, crops, outlines and edges as embedded PNGs.

Everything here works on numpy arrays already brought to the closest RAS orientation
(:class:`Grid`), so that every picture is shown the same way whatever the scanner's voxel order:
axial slices with anterior at the top and the subject's left on the left of the picture
(neurological convention), coronal with superior at the top, sagittal with anterior on the right.
Pictures are composed in numpy and encoded with Pillow; no figure machinery is involved.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

from deepmir_tasks.io import InputError, load_image
from deepmir_tasks.labels import CLASSES

#: RGB colours of the overlays.
COLOURS = {
    "edge": (255, 60, 60),
    "mask": (60, 220, 255),
    "cmb": (255, 40, 40),
    "iron": (255, 200, 0),
    "other": (200, 0, 255),
    "marker": (60, 255, 60),
}


@dataclass
class Grid:
    """The working-grid images of one subject, reoriented to the closest RAS voxel order."""

    t2: np.ndarray
    swi: np.ndarray
    qsm: np.ndarray
    mask: np.ndarray  # bool
    dseg: np.ndarray  # int16 labels
    zooms: np.ndarray  # voxel size (mm) along the RAS voxel axes
    shape_in: tuple  # shape of the files as given
    zooms_in: tuple  # voxel sizes of the files as given
    axcodes_in: tuple  # orientation of the files as given, e.g. ('L', 'P', 'S')
    ornt: np.ndarray  # nibabel orientation from the given voxel axes to RAS axes
    windows: dict  # modality -> (low, high) display window

    def to_ras_index(self, ijk) -> tuple[int, int, int]:
        """Map a voxel index of the files as given to the index in the RAS-ordered arrays."""
        out = [0, 0, 0]
        for axis, (new_axis, flip) in enumerate(self.ornt):
            value = int(ijk[axis])
            if flip < 0:
                value = self.shape_in[axis] - 1 - value
            out[int(new_axis)] = value
        return tuple(out)


def load_grid(t2, swi, qsm, mask, dseg) -> Grid:
    """Load the five working-grid images, check they share one grid and reorient them to RAS."""
    import nibabel as nib
    from nibabel import orientations as nio

    files = {"T2w": t2, "SWI": swi, "QSM": qsm, "brain mask": mask, "dseg": dseg}
    imgs = {}
    for what, path in files.items():
        if path is None and what in ("T2w", "SWI", "QSM"):  # a subject without it: shown as an empty map
            continue
        # an empty mask or dseg is something the rater must see, not a reason to fail
        allow_empty = what in ("dseg", "QSM", "brain mask")
        imgs[what] = load_image(path, what=what, allow_empty=allow_empty)
    ref = imgs["brain mask"]  # the working grid (of the subject's reference: T2w, else SWI, else QSM)
    for what, img in imgs.items():
        if img.shape != ref.shape:
            raise InputError(files[what], f"{what} has shape {img.shape} but the brain mask has {ref.shape}; "
                                          "the report needs all images in one working grid")
        if not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise InputError(files[what], f"{what} affine differs from the brain mask's; "
                                          "the report needs all images in one working grid")
    ornt = nio.io_orientation(ref.affine)
    axcodes = nib.aff2axcodes(ref.affine)
    zooms_in = tuple(float(z) for z in ref.header.get_zooms()[:3])

    def reorient(img):
        return np.ascontiguousarray(nio.apply_orientation(np.asarray(img.dataobj), ornt))

    zooms = np.empty(3)
    for axis, (new_axis, _) in enumerate(ornt):
        zooms[int(new_axis)] = zooms_in[axis]
    for what in ("T2w", "SWI", "QSM"):
        if what not in imgs:
            imgs[what] = nib.Nifti1Image(np.zeros(ref.shape, np.float32), ref.affine)
    data = {k: reorient(v) for k, v in imgs.items()}
    brain = data["brain mask"] > 0
    dseg_arr = np.rint(data["dseg"]).astype(np.int16)
    windows = {
        "t2": robust_window(data["T2w"], brain),
        "swi": robust_window(data["SWI"], brain),
        "qsm": symmetric_window(data["QSM"], brain),
    }
    return Grid(t2=data["T2w"], swi=data["SWI"], qsm=data["QSM"], mask=brain, dseg=dseg_arr,
                zooms=zooms, shape_in=tuple(ref.shape), zooms_in=zooms_in, axcodes_in=tuple(axcodes),
                ornt=ornt, windows=windows)


def robust_window(data: np.ndarray, mask: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5):
    """Display window from percentiles of the values inside ``mask`` (all non-zero if it is empty)."""
    values = data[mask] if mask.any() else data[data != 0]
    if values.size == 0:
        values = data.ravel()
    lo, hi = np.percentile(values, [lo_pct, hi_pct])
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def symmetric_window(data: np.ndarray, mask: np.ndarray, pct: float = 99.5):
    """Window centred on zero (for QSM in ppm): ± the ``pct`` percentile of |values| in ``mask``."""
    values = np.abs(data[mask] if mask.any() else data.ravel())
    half = float(np.percentile(values, pct)) if values.size else 0.0
    if not half > 0:
        half = float(values.max()) if values.size and values.max() > 0 else 1.0
    return -half, half


# ----------------------------------------------------------------------------------------------
# 2-D views


def view(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """A 2-D slice of a RAS-ordered volume, oriented for display (row 0 at the top)."""
    if plane == "axial":
        sl = volume[:, :, index]
    elif plane == "coronal":
        sl = volume[:, index, :]
    elif plane == "sagittal":
        sl = volume[index, :, :]
    else:
        raise ValueError(f"unknown plane {plane!r}")
    return sl.T[::-1, :]


def view_spacing(zooms, plane: str) -> tuple[float, float]:
    """(row, column) pixel spacing in mm of :func:`view`."""
    x, y, z = (float(v) for v in zooms)
    return {"axial": (y, x), "coronal": (z, x), "sagittal": (z, y)}[plane]


def resize(img2d: np.ndarray, spacing, px_per_mm: float, *, labels: bool = False) -> np.ndarray:
    """Resample a 2-D view so that each pixel is ``1/px_per_mm`` mm (square pixels)."""
    from scipy import ndimage

    factors = [s * px_per_mm for s in spacing]
    if np.allclose(factors, 1.0):
        return img2d
    out_shape = [max(1, int(round(n * f))) for n, f in zip(img2d.shape, factors)]
    if labels:
        rows = np.minimum((np.arange(out_shape[0]) + 0.5) / factors[0], img2d.shape[0] - 1).astype(int)
        cols = np.minimum((np.arange(out_shape[1]) + 0.5) / factors[1], img2d.shape[1] - 1).astype(int)
        return img2d[np.ix_(rows, cols)]
    zoom = [o / n for o, n in zip(out_shape, img2d.shape)]
    return ndimage.zoom(img2d.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)


def to_gray(img2d: np.ndarray, window) -> np.ndarray:
    """Map intensities to uint8 grey levels with a (low, high) window."""
    lo, hi = window
    scaled = (img2d.astype(np.float32) - lo) / float(hi - lo)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def outline(mask2d: np.ndarray) -> np.ndarray:
    """One-pixel inner boundary of a 2-D mask."""
    from scipy import ndimage

    mask2d = mask2d.astype(bool)
    if not mask2d.any():
        return mask2d
    inner = ndimage.binary_erosion(mask2d, structure=np.ones((3, 3), bool), border_value=0)
    return mask2d & ~inner


def outer_outline(mask2d: np.ndarray) -> np.ndarray:
    """One-pixel ring just outside a 2-D mask."""
    from scipy import ndimage

    mask2d = mask2d.astype(bool)
    if not mask2d.any():
        return mask2d
    return ndimage.binary_dilation(mask2d, structure=np.ones((3, 3), bool)) & ~mask2d


def edges(gray: np.ndarray, support: np.ndarray | None = None, rel: float = 0.3) -> np.ndarray:
    """Strong edges of a grey image: Sobel magnitudes above ``rel`` times their 99.5th percentile
    (inside ``support`` when given), thinned to local maxima.

    Thinning keeps a pixel only where the magnitude is a local maximum along the gradient's
    dominant axis, which gives one-to-two pixel lines that leave the image below readable.
    """
    from scipy import ndimage

    g = gray.astype(np.float32)
    gy = ndimage.sobel(g, axis=0)
    gx = ndimage.sobel(g, axis=1)
    mag = np.hypot(gx, gy)
    pool = mag[support] if support is not None and support.any() else mag[mag > 0]
    if pool.size == 0:
        return np.zeros(gray.shape, bool)
    thr = rel * float(np.percentile(pool, 99.5))
    strong = mag >= max(thr, 1e-6)
    # non-maximum suppression along the dominant gradient axis
    vertical = np.abs(gy) >= np.abs(gx)
    up = np.roll(mag, 1, axis=0)
    down = np.roll(mag, -1, axis=0)
    left = np.roll(mag, 1, axis=1)
    right = np.roll(mag, -1, axis=1)
    peak = np.where(vertical, (mag >= up) & (mag >= down), (mag >= left) & (mag >= right))
    out = strong & peak
    if support is not None:
        out &= support
    return out


def paint(rgb: np.ndarray, where: np.ndarray, colour, alpha: float = 1.0) -> np.ndarray:
    """Blend ``colour`` into ``rgb`` where ``where`` is true (in place; returns ``rgb``)."""
    if where.any():
        c = np.asarray(colour, dtype=np.float32)
        rgb[where] = (rgb[where].astype(np.float32) * (1.0 - alpha) + c * alpha + 0.5).astype(np.uint8)
    return rgb


def hstack(images: list[np.ndarray], gap: int = 2, fill: int = 255) -> np.ndarray:
    """Place RGB images side by side, top-aligned, separated by ``gap`` pixels of ``fill``."""
    height = max(im.shape[0] for im in images)
    parts = []
    for n, im in enumerate(images):
        if im.shape[0] < height:
            pad = np.full((height - im.shape[0], im.shape[1], 3), fill, np.uint8)
            im = np.concatenate([im, pad], axis=0)
        parts.append(im)
        if n < len(images) - 1 and gap:
            parts.append(np.full((height, gap, 3), fill, np.uint8))
    return np.concatenate(parts, axis=1)


def png_data_uri(pixels: np.ndarray) -> str:
    """Encode a uint8 grey (H, W) or RGB (H, W, 3) array as a ``data:image/png;base64,`` URI."""
    from PIL import Image

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and np.array_equal(pixels[..., 0], pixels[..., 1]) \
            and np.array_equal(pixels[..., 0], pixels[..., 2]):
        pixels = np.ascontiguousarray(pixels[..., 0])  # grey pictures compress three times better
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------------
# Report pictures


def overview_slices(grid: Grid, n_axial: int = 5) -> list[tuple[str, int]]:
    """Slices spread over the brain: ``n_axial`` axial ones plus a coronal and a sagittal one."""
    mask = grid.mask if grid.mask.any() else grid.t2 != 0
    if not mask.any():
        mask = np.ones(grid.t2.shape, bool)
    idx = np.nonzero(mask)
    z_lo, z_hi = int(idx[2].min()), int(idx[2].max())
    fractions = np.linspace(0.15, 0.85, n_axial)
    axial = sorted({int(round(z_lo + f * (z_hi - z_lo))) for f in fractions})
    centre = [int(round(np.mean(a))) for a in idx]
    return [("axial", k) for k in axial] + [("coronal", centre[1]), ("sagittal", centre[0])]


def overview_scale(grid: Grid, target_px: int = 150) -> float:
    """Pixels per mm for overview slices: the largest field of view drawn in about ``target_px``.

    Fine grids are thereby downsampled (a 0.5 mm grid is drawn at about 1 px/mm) and tiny test
    grids enlarged; the result is clipped to 0.5-4 px/mm.
    """
    fov = float(np.max(np.asarray(grid.t2.shape) * grid.zooms))
    return float(np.clip(target_px / fov, 0.5, 4.0))


def overview_picture(grid: Grid, modality: str, plane: str, index: int, *, overlay: str | None = None,
                     px_per_mm: float | None = None) -> np.ndarray:
    """RGB picture of one slice of ``modality`` with an optional overlay.

    ``overlay``: ``"t2_edges"`` (edges of the T2w drawn on the picture, for registration checks),
    ``"mask"`` (brain mask outline), ``"dseg"`` (detections outlined by class) or None.
    """
    if px_per_mm is None:
        px_per_mm = overview_scale(grid)
    spacing = view_spacing(grid.zooms, plane)
    vol = getattr(grid, modality)
    gray = to_gray(resize(view(vol, plane, index), spacing, px_per_mm), grid.windows[modality])
    rgb = to_rgb(gray)
    if overlay == "t2_edges":
        t2_gray = to_gray(resize(view(grid.t2, plane, index), spacing, px_per_mm), grid.windows["t2"])
        head = resize(view(grid.mask.astype(np.uint8), plane, index), spacing, px_per_mm, labels=True) > 0
        from scipy import ndimage

        support = ndimage.binary_dilation(head, iterations=3) if head.any() else None
        paint(rgb, edges(t2_gray, support), COLOURS["edge"], alpha=0.85)
    elif overlay == "mask":
        m = resize(view(grid.mask.astype(np.uint8), plane, index), spacing, px_per_mm, labels=True) > 0
        paint(rgb, outline(m), COLOURS["mask"])
    elif overlay == "dseg":
        lab = resize(view(grid.dseg, plane, index), spacing, px_per_mm, labels=True)
        paint_labels(rgb, lab)
    elif overlay is not None:
        raise ValueError(f"unknown overlay {overlay!r}")
    return rgb


def paint_labels(rgb: np.ndarray, labels2d: np.ndarray, *, outside: bool = False) -> np.ndarray:
    """Outline label 1 (CMB), label 2 (iron) and any other label in their colours.

    ``outside`` draws the line on the pixels just outside each label instead of its rim.
    """
    for value in np.unique(labels2d):
        if value == 0:
            continue
        colour = COLOURS.get(CLASSES.get(int(value)), COLOURS["other"])
        sel = labels2d == value
        line = outer_outline(sel) & (labels2d == 0) if outside else outline(sel)
        paint(rgb, line, colour)
    return rgb


def crop2d(img2d: np.ndarray, centre_rc, half_rc, fill) -> np.ndarray:
    """Crop ``[c - h, c + h]`` around ``centre_rc`` (rows, columns), padding with ``fill``."""
    r, c = centre_rc
    hr, hc = half_rc
    out = np.full((2 * hr + 1, 2 * hc + 1), fill, dtype=img2d.dtype)
    r0, r1 = max(r - hr, 0), min(r + hr + 1, img2d.shape[0])
    c0, c1 = max(c - hc, 0), min(c + hc + 1, img2d.shape[1])
    if r0 < r1 and c0 < c1:
        out[r0 - (r - hr):r1 - (r - hr), c0 - (c - hc):c1 - (c - hc)] = img2d[r0:r1, c0:c1]
    return out


def lesion_tile_picture(grid: Grid, ijk_ras, *, fov_mm: float = 32.0, panel_px: int = 92,
                        contour: bool = True) -> np.ndarray:
    """Axial crops through a lesion's centroid: T2w | SWI | QSM | SWI with the detection outlined.

    ``ijk_ras`` is the centroid voxel in the RAS-ordered arrays; each panel covers ``fov_mm`` and is
    ``panel_px`` pixels square. The last panel outlines every detection of ``dseg`` in the crop
    (red CMB, yellow iron; drawn just outside the detection so its inside stays visible) when
    ``contour`` is true, and marks the centroid with four short green ticks, so that a candidate
    which is not in ``dseg`` is still pointed at.
    """
    i, j, k = (int(v) for v in ijk_ras)
    spacing = view_spacing(grid.zooms, "axial")
    # position of voxel (i, j) in the axial view: row = ny - 1 - j, column = i
    ny = grid.t2.shape[1]
    centre = (ny - 1 - j, i)
    half = tuple(max(1, int(round(fov_mm / 2.0 / s))) for s in spacing)
    px_per_mm = panel_px / fov_mm
    panels = []
    for modality in ("t2", "swi", "qsm"):
        lo, hi = grid.windows[modality]
        sl = view(getattr(grid, modality), "axial", k)
        fill = lo if modality != "qsm" else 0.0
        cropped = crop2d(sl, centre, half, fill)
        panels.append(_fit(to_rgb(to_gray(resize(cropped, spacing, px_per_mm), (lo, hi))), panel_px))
    last = panels[1].copy()
    if contour:
        lab = crop2d(view(grid.dseg, "axial", k), centre, half, 0)
        lab = _fit(resize(lab, spacing, px_per_mm, labels=True)[..., None], panel_px)[..., 0]
        paint_labels(last, lab, outside=True)
    _ticks(last)
    panels.append(last)
    return hstack(panels)


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Crop or edge-pad the first two axes of ``img`` to ``size`` (rounding leftovers)."""
    for axis in (0, 1):
        n = img.shape[axis]
        if n > size:
            start = (n - size) // 2
            img = np.take(img, np.arange(start, start + size), axis=axis)
        elif n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * img.ndim
            pad[axis] = (before, size - n - before)
            img = np.pad(img, pad, mode="edge")
    return img


def _ticks(rgb: np.ndarray, inner_frac: float = 0.28, outer_frac: float = 0.42) -> None:
    """Four short ticks pointing at the centre of ``rgb``."""
    h, w = rgb.shape[:2]
    cr, cc = h // 2, w // 2
    a_r, b_r = int(inner_frac * h), int(outer_frac * h)
    a_c, b_c = int(inner_frac * w), int(outer_frac * w)
    colour = np.asarray(COLOURS["marker"], np.uint8)
    rgb[cr - b_r:cr - a_r, cc] = colour
    rgb[cr + a_r:cr + b_r, cc] = colour
    rgb[cr, cc - b_c:cc - a_c] = colour
    rgb[cr, cc + a_c:cc + b_c] = colour
