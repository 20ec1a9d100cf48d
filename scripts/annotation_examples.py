"""Example tiles for docs/ANNOTATION.md: one simulated subject's CMB, iron deposit, calcification
and vein as T2w | SWI | QSM crops (axial, 32 mm wide, through the lesion's centre).

    .venv/bin/python scripts/annotation_examples.py docs/annotation_examples

Each image is cut from its own acquisition grid (T2w, or SWI/QSM through the simulator's known
SWI->T2w transform) and shown with its own display range: T2w and SWI from the 1st to 99th
percentile of the crop, QSM from -0.3 to +0.6 ppm (grey = 0, bright = paramagnetic).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SEED = 4242
HALF_MM = 16.0
PIXELS = 160


def crop(img, world_xyz, half_mm=HALF_MM):
    """An axial crop of ``img`` around a world point, resampled to PIXELS x PIXELS (nearest slice)."""
    from scipy.ndimage import map_coordinates

    inv = np.linalg.inv(img.affine)
    ijk = inv[:3, :3] @ world_xyz + inv[:3, 3]
    data = np.asarray(img.dataobj, np.float32)
    u = np.linspace(-half_mm, half_mm, PIXELS)
    xx, yy = np.meshgrid(u, u[::-1], indexing="xy")   # image rows go from anterior (top) down
    pts = np.stack([world_xyz[0] + xx, world_xyz[1] + yy, np.full_like(xx, world_xyz[2])], 0).reshape(3, -1)
    vox = inv[:3, :3] @ pts + inv[:3, 3:4]
    vox[2] = np.round(ijk[2])                          # the nearest acquired slice
    return map_coordinates(data, vox, order=1, mode="nearest").reshape(PIXELS, PIXELS)


def to_grey(a, lo=None, hi=None):
    lo = np.percentile(a, 1) if lo is None else lo
    hi = np.percentile(a, 99) if hi is None else hi
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def main(out_dir) -> int:
    from deepmir_tasks.simulate import simulate_subject

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = simulate_subject(SEED, size="full", lesion_counts={"cmb": 3, "iron": 2, "calcification": 2, "vein": 2})
    t2_from_swi = np.asarray(sim.swi_to_t2)
    swi_from_t2 = np.linalg.inv(t2_from_swi)
    for kind in ("cmb", "iron", "calcification", "vein"):
        row = sim.lesions[sim.lesions["kind"] == kind].iloc[0]
        x_t2 = row[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        x_swi = swi_from_t2[:3, :3] @ x_t2 + swi_from_t2[:3, 3]
        tiles = [to_grey(crop(sim.t2, x_t2)), to_grey(crop(sim.swi, x_swi)),
                 to_grey(crop(sim.qsm, x_swi), -0.3, 0.6)]
        strip = Image.new("L", (3 * PIXELS + 8, PIXELS + 18), 255)
        draw = ImageDraw.Draw(strip)
        for n, (tile, name) in enumerate(zip(tiles, ("T2w", "SWI", "QSM"))):
            strip.paste(Image.fromarray(tile), (n * (PIXELS + 4), 18))
            draw.text((n * (PIXELS + 4) + 4, 3), name, fill=0)
        strip.save(out_dir / f"{kind}.png")
        print(f"{kind}: {out_dir / (kind + '.png')} (centre {np.round(x_t2, 1).tolist()} mm, "
              f"chi {row['chi_ppm']:.2f} ppm, radius {row['radius_mm']:.1f} mm)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/annotation_examples"))
