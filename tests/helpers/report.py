"""Small subjects in one working grid with detections and lesion tables, for the report tests.

``make_phantom`` draws a head phantom (64x56x40 or given shape, LPS voxel order on purpose so the
report's reorientation is exercised) with spherical CMBs and iron deposits; ``make_simulated``
takes a small simulated subject from ``deepmir_tasks.simulate`` and resamples its SWI and QSM
onto the T2w grid with the true SWI->T2w transform. Both build the lesion table from the labelled
image with cc3d, following the lesion-table contract, so tables and images agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REGIONS = ("lobar-frontal", "lobar-parietal", "lobar-temporal", "lobar-occipital", "deep",
           "infratentorial")


def lesion_table(dseg: np.ndarray, affine: np.ndarray, qsm: np.ndarray, swi: np.ndarray,
                 participant_id: str = "sub-01", seed: int = 0) -> pd.DataFrame:
    """Per-lesion table (contract columns) of the connected components of ``dseg``."""
    import cc3d
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    comps = cc3d.connected_components(dseg.astype(np.uint8), connectivity=26)
    rows = []
    for n in range(1, int(comps.max()) + 1):
        sel = comps == n
        ijk = np.argwhere(sel)
        centre = ijk.mean(axis=0)
        # the voxel of the component nearest to its centroid
        vox = ijk[np.argmin(((ijk - centre) ** 2).sum(axis=1))]
        xyz = affine[:3, :3] @ centre + affine[:3, 3]
        shell = ndimage.binary_dilation(sel, iterations=2) & ~sel
        label = {1: "cmb", 2: "iron"}[int(np.bincount(dseg[sel]).argmax())]
        n_vox = int(sel.sum())
        volume = n_vox * voxel_mm3
        pmax = float(rng.uniform(0.55, 0.99))
        rows.append({
            "participant_id": participant_id, "lesion_id": n, "label": label,
            "n_voxels": n_vox, "volume_mm3": round(volume, 3),
            "diameter_mm": round(float((6 * volume / np.pi) ** (1 / 3)), 3),
            "x_mm": round(float(xyz[0]), 2), "y_mm": round(float(xyz[1]), 2), "z_mm": round(float(xyz[2]), 2),
            "i": int(vox[0]), "j": int(vox[1]), "k": int(vox[2]),
            "prob_max": round(pmax, 4), "prob_mean": round(pmax * 0.8, 4),
            "qsm_mean_ppm": round(float(qsm[sel].mean()), 4), "qsm_max_ppm": round(float(qsm[sel].max()), 4),
            "swi_contrast": round(float(swi[sel].mean() - swi[shell].mean()), 4),
            "region": REGIONS[int(rng.integers(len(REGIONS)))],
        })
    columns = ["participant_id", "lesion_id", "label", "n_voxels", "volume_mm3", "diameter_mm", "x_mm",
               "y_mm", "z_mm", "i", "j", "k", "prob_max", "prob_mean", "qsm_mean_ppm", "qsm_max_ppm",
               "swi_contrast", "region"]
    return pd.DataFrame(rows, columns=columns)


def _ball(shape, centre, radius):
    grid = np.indices(shape).astype(np.float32)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return d2 <= radius ** 2


def make_phantom(out_dir, *, n_cmb: int = 6, n_iron: int = 4, n_dropped: int = 2,
                 shape=(64, 56, 40), seed: int = 0, participant_id: str = "sub-01") -> dict:
    """Write a phantom subject in one grid; return a dict of paths and the tables.

    Keys: ``t2``, ``swi``, ``qsm``, ``mask``, ``dseg``, ``lesions_tsv``, ``dropped_tsv`` (paths),
    ``lesions``, ``dropped`` (DataFrames).
    """
    import nibabel as nib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centre = np.array(shape) / 2.0
    idx = np.indices(shape).astype(np.float32)
    radii = np.array(shape) * np.array([0.40, 0.42, 0.42])
    r = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(idx, centre, radii)))
    brain = r <= 1.0
    skull = (r > 1.08) & (r <= 1.22)
    vent = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in
                       zip(idx, centre, radii * np.array([0.25, 0.45, 0.3])))) <= 1.0
    smooth = np.sin(idx[0] / 5.0) * np.cos(idx[1] / 7.0) * np.sin(idx[2] / 4.0)

    t2 = np.where(brain, 1.0 + 0.15 * smooth, 0.0) + np.where(vent, 1.2, 0.0) + np.where(skull, 0.3, 0.0)
    swi = np.where(brain, 1.0 - 0.1 * smooth, 0.0) + np.where(vent, 0.2, 0.0) + np.where(skull, 0.6, 0.0)
    qsm = np.where(brain, 0.03 * smooth, 0.0)

    dseg = np.zeros(shape, np.uint8)
    inner = np.argwhere(brain & ~vent & (r < 0.8))
    placed = []

    def place(radius):
        for _ in range(200):
            c = inner[rng.integers(len(inner))]
            if all(np.linalg.norm(c - p) > 7 for p in placed):
                placed.append(c)
                return c, _ball(shape, c, radius)
        raise RuntimeError("phantom too crowded")

    for n in range(n_cmb + n_iron):
        kind = 1 if n < n_cmb else 2
        c, ball = place(rng.uniform(1.0, 2.2))
        dseg[ball] = kind
        t2[ball] *= 0.35 if kind == 1 else 0.7
        swi[ball] *= 0.2 if kind == 1 else 0.55
        qsm[ball] = 0.45 if kind == 1 else 0.15
    mimic = np.zeros(shape, np.uint8)
    for _ in range(n_dropped):
        c, ball = place(1.6)
        mimic[ball] = 1
        t2[ball] *= 0.4
        swi[ball] *= 0.25
        qsm[ball] = -0.3  # calcification: diamagnetic
    t2 += rng.normal(0, 0.02, shape) * (t2 > 0)
    swi += rng.normal(0, 0.02, shape) * (swi > 0)

    # LPS voxel order and 1 mm voxels; origin roughly at the centre
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [shape[0] / 2, shape[1] / 2, -shape[2] / 2]
    paths = {}
    for name, data, dtype in (("t2", t2, np.float32), ("swi", swi, np.float32), ("qsm", qsm, np.float32),
                              ("mask", brain, np.uint8), ("dseg", dseg, np.uint8)):
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
        paths[name] = out_dir / f"{name}.nii.gz"
        nib.save(img, str(paths[name]))
    lesions = lesion_table(dseg, affine, qsm, swi, participant_id, seed)
    dropped = lesion_table(mimic, affine, qsm, swi, participant_id, seed + 1)
    dropped["label"] = "cmb"
    dropped["reason"] = "negative-qsm"
    dropped["lesion_id"] = dropped["lesion_id"] + 1000
    paths["lesions_tsv"] = out_dir / "lesions.tsv"
    paths["dropped_tsv"] = out_dir / "dropped.tsv"
    lesions.to_csv(paths["lesions_tsv"], sep="\t", index=False, na_rep="n/a")
    dropped.to_csv(paths["dropped_tsv"], sep="\t", index=False, na_rep="n/a")
    return {**paths, "lesions": lesions, "dropped": dropped, "affine": affine}


def make_simulated(out_dir, *, seed: int = 3, participant_id: str = "sub-01") -> dict:
    """A small simulated subject with SWI and QSM resampled onto the T2w grid (true transform).

    The truth dseg is the detection map. Returns the same keys as :func:`make_phantom`
    (``dropped`` empty but with a ``reason`` column).
    """
    import nibabel as nib
    from scipy import ndimage

    from deepmir_tasks.simulate import simulate_subject

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subj = simulate_subject(seed, size="small")
    t2_img = subj.t2
    ref_aff = t2_img.affine
    shape = t2_img.shape[:3]

    def to_t2_grid(img, order=1):
        # T2w voxel -> T2w world -> SWI world -> SWI voxel
        m = np.linalg.inv(img.affine) @ np.linalg.inv(np.asarray(subj.swi_to_t2)) @ ref_aff
        return ndimage.affine_transform(np.asarray(img.dataobj, dtype=np.float32), m[:3, :3], m[:3, 3],
                                        output_shape=shape, order=order, mode="constant", cval=0.0)

    t2 = np.asarray(t2_img.dataobj, dtype=np.float32)
    swi = to_t2_grid(subj.swi)
    qsm = to_t2_grid(subj.qsm)
    dseg = np.asarray(subj.dseg.dataobj).astype(np.uint8)
    mask = np.asarray(subj.brain_mask.dataobj).astype(np.uint8)
    paths = {}
    for name, data, dtype in (("t2", t2, np.float32), ("swi", swi, np.float32), ("qsm", qsm, np.float32),
                              ("mask", mask, np.uint8), ("dseg", dseg, np.uint8)):
        paths[name] = out_dir / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), ref_aff), str(paths[name]))
    lesions = lesion_table(dseg, ref_aff, qsm, swi, participant_id, seed)
    dropped = lesions.iloc[0:0].copy()
    dropped["reason"] = pd.Series(dtype=str)
    paths["lesions_tsv"] = out_dir / "lesions.tsv"
    paths["dropped_tsv"] = out_dir / "dropped.tsv"
    lesions.to_csv(paths["lesions_tsv"], sep="\t", index=False, na_rep="n/a")
    dropped.to_csv(paths["dropped_tsv"], sep="\t", index=False, na_rep="n/a")
    return {**paths, "lesions": lesions, "dropped": dropped, "affine": ref_aff}


# ----------------------------------------------------------------------------------------------
# Reading rendered pages


class Element:
    """One start tag of a parsed page: its name, attributes and enclosing elements' classes."""

    def __init__(self, tag, attrs, ancestors):
        self.tag = tag
        self.attrs = dict(attrs)
        self.ancestors = ancestors  # list of (tag, attrs) from the root

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def inside(self, tag: str, cls: str | None = None) -> bool:
        return any(t == tag and (cls is None or cls in (a.get("class") or "").split())
                   for t, a in self.ancestors)


def parse_page(text: str) -> list[Element]:
    """All start tags of an HTML page, in document order, with their ancestors."""
    from html.parser import HTMLParser

    void = {"img", "meta", "br", "hr", "input", "link", "source", "col", "area", "base", "wbr"}

    class _Parser(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.stack = []
            self.elements = []

        def handle_starttag(self, tag, attrs):
            self.elements.append(Element(tag, attrs, list(self.stack)))
            if tag not in void:
                self.stack.append((tag, dict(attrs)))

        def handle_endtag(self, tag):
            for n in range(len(self.stack) - 1, -1, -1):
                if self.stack[n][0] == tag:
                    del self.stack[n:]
                    break

    parser = _Parser()
    parser.feed(text)
    return parser.elements


def decode_data_png(uri: str):
    """Decode a ``data:image/png;base64,`` URI with Pillow; return the image (fully loaded)."""
    import base64
    import io

    from PIL import Image

    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    img = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):], validate=True)))
    img.load()
    return img
