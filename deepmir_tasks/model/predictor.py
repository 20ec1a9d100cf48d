"""Inference: load a model once, predict many subjects.

:class:`Predictor` normalises the inputs as the model record says, crops to the brain, and runs
the network either on the whole (padded) volume when it fits under a voxel budget, or in sliding
windows whose overlaps are blended with Gaussian weights. Optional test-time augmentation averages
the predictions over mirrored copies. It returns float32 class probabilities of shape
``(n_classes, X, Y, Z)`` and, with :meth:`Predictor.labels`, a label map.

:func:`segment_subject` is the file-level entry point used by the Pydra task: it writes
``probseg`` maps for CMB and iron and a ``dseg`` (0 background, 1 CMB, 2 iron) atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from deepmir_tasks.bids_names import MODALITY_NAMES, entities, job_file_name, subject_key
from deepmir_tasks.io import InputError, load_image, load_mask, save_nifti, write_json
from deepmir_tasks.labels import DSEG_LABELS

__all__ = ["Predictor", "MissingModalityError", "segment_subject", "lesion_probabilities", "serves_subsets", "gaussian_window", "DSEG_LABELS"]

log = logging.getLogger(__name__)



class MissingModalityError(InputError):
    """The subject lacks a modality the model was trained on."""


def gaussian_window(shape, sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian weights for blending windows (peak 1 at the centre, floor 1e-3)."""
    w = np.ones(shape, np.float32)
    for ax, n in enumerate(shape):
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2
        g = np.exp(-0.5 * (x / max(n * sigma_scale, 1e-3)) ** 2)
        w = w * g.reshape([-1 if i == ax else 1 for i in range(len(shape))])
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


class Predictor:
    """A loaded model ready to segment subjects.

    Args:
        net: the network (``deepmir_tasks.model.unet.UNet``).
        record: its model record (see ``modelfile``).
        source: where the model came from (for messages).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        threads: torch CPU threads (``torch.set_num_threads``) during prediction; None leaves it.
        tta: average over mirrored copies (the three axes) by default; always on for a model whose
            lesion rules were calibrated that way (``inference.tta`` of its record).
        max_voxels: whole-volume inference when the padded brain box has at most this many voxels
            (about 0.4 GB per million voxels at 5 levels / base 16); otherwise sliding windows.
        window: sliding-window edge in voxels (rounded up to the network's multiple).
        overlap: fraction of overlap between neighbouring windows.
    """

    def __init__(self, net, record: dict, *, source="model", device="cpu", threads: int | None = None,
                 tta: bool = False, max_voxels: int = 7_000_000, window: int = 96, overlap: float = 0.5):
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.record = record
        self.source = str(source)
        self.threads = threads
        from deepmir_tasks.model.modelfile import calibrated_with_tta

        self.required_tta = calibrated_with_tta(record)
        self.tta = bool(tta) or self.required_tta
        self.max_voxels = int(max_voxels)
        m = net.required_multiple
        self.window = int(np.ceil(window / m) * m)
        self.overlap = float(overlap)
        self.modalities = list(record["modalities"])
        self.any_subset = serves_subsets(record)
        self.classes = list(record["classes"])
        self.normalization = record["normalization"]
        self.slices = int(record["architecture"].get("slices", 1)) if net.dim == 2 else 1

    @classmethod
    def from_file(cls, path=None, **kwargs) -> "Predictor":
        """Load a model file (``None`` = the bundled default model) and its record."""
        from deepmir_tasks.model.modelfile import DEFAULT_MODEL, load_model

        path = Path(path) if path is not None else DEFAULT_MODEL
        net, rec = load_model(path)
        return cls(net, rec, source=path, **kwargs)

    # ------------------------------------------------------------------ prediction
    def check_modalities(self, available) -> None:
        """Raise :class:`MissingModalityError` if a modality the model needs is not available (a
        model trained with modality dropout, :func:`serves_subsets`, needs any one of its own)."""
        missing = [m for m in self.modalities if m not in available]
        if self.any_subset and len(missing) < len(self.modalities):
            return
        if missing:
            names = ", ".join(MODALITY_NAMES.get(m, m) for m in missing)
            need = "+".join(MODALITY_NAMES.get(m, m) for m in self.modalities)
            raise MissingModalityError(
                self.source, f"this model was trained on {need} and needs {names}, which the subject "
                             f"lacks; give the missing image or use a model trained without it")

    def predict(self, volumes: dict, mask: np.ndarray | None = None, *, tta: bool | None = None) -> np.ndarray:
        """Class probabilities, float32, shape ``(n_classes, X, Y, Z)``; background 1 outside ``mask``.
        ``tta``: ``None`` keeps the predictor's setting; ``False`` cannot turn off the augmentation a
        model's record requires."""
        import torch

        self.check_modalities({k for k, v in volumes.items() if v is not None})
        present = [m for m in self.modalities if volumes.get(m) is not None]
        shape = np.shape(volumes[present[0]])
        for m in present:
            if np.shape(volumes[m]) != shape:
                raise ValueError(f"modality {m} has shape {np.shape(volumes[m])}, expected {shape}")
        if mask is not None:
            mask = np.asarray(mask) > 0
            if mask.shape != shape:
                raise ValueError(f"mask has shape {mask.shape}, expected {shape}")
        from deepmir_tasks.model.normalize import normalize_stack

        # a missing modality is a zero channel, as modality dropout showed it in training
        x = normalize_stack({m: volumes.get(m) for m in self.modalities}, mask, self.modalities,
                            self.normalization, shape=shape)
        probs = np.zeros((len(self.classes),) + tuple(shape), np.float32)
        probs[0] = 1.0
        if mask is not None:
            if not mask.any():
                return probs
            idx = np.argwhere(mask)
            lo = np.maximum(idx.min(0) - 4, 0)
            hi = np.minimum(idx.max(0) + 5, shape)
        else:
            lo, hi = np.zeros(3, int), np.array(shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        xb = np.ascontiguousarray(x[(slice(None),) + box])
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            with torch.inference_mode():
                pb = self._predict_tta(xb, self.uses_tta(tta))
        finally:
            if self.threads:
                torch.set_num_threads(old_threads)
        probs[(slice(None),) + box] = pb
        if mask is not None:
            probs[:, ~mask] = 0.0
            probs[0, ~mask] = 1.0
        return probs

    def uses_tta(self, tta: bool | None = None) -> bool:
        """Whether :meth:`predict` augments, given its ``tta`` argument."""
        return self.tta if tta is None else bool(tta) or self.required_tta

    def labels(self, probs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Label map (indices into ``classes``): the most probable class of each voxel, background
        outside ``mask``. The lesion rules (voxel threshold, peak probability, size, shape) are
        applied by the lesion extraction, from the record's ``inference.lesions``, not here."""
        lab = np.argmax(probs, axis=0).astype(np.uint8)
        if mask is not None:
            lab[np.asarray(mask) == 0] = 0
        return lab

    # ------------------------------------------------------------------ internals
    def _predict_tta(self, x: np.ndarray, tta: bool) -> np.ndarray:
        out = self._predict_box(x)
        if not tta:
            return out
        for ax in (1, 2, 3):
            flipped = np.ascontiguousarray(np.flip(x, ax))
            out += np.flip(self._predict_box(flipped), ax)
        return out / 4.0

    def _predict_box(self, x: np.ndarray) -> np.ndarray:
        if self.net.dim == 2:
            return self._predict_slices(x)
        m = self.net.required_multiple
        shape = np.array(x.shape[1:])
        padded = np.ceil(shape / m).astype(int) * m
        if np.prod(padded) <= self.max_voxels:
            return self._run_whole(x, padded)
        return self._run_windows(x)

    def _forward(self, arr: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(arr[None])).to(self.device)
        return torch.softmax(self.net(t), dim=1)[0].float().cpu().numpy()

    def _run_whole(self, x: np.ndarray, padded) -> np.ndarray:
        shape = x.shape[1:]
        pad = [(0, 0)] + [(0, int(p - s)) for p, s in zip(padded, shape)]
        out = self._forward(np.pad(x, pad))
        return out[(slice(None),) + tuple(slice(0, s) for s in shape)]

    def _run_windows(self, x: np.ndarray) -> np.ndarray:
        shape = np.array(x.shape[1:])
        win = np.minimum(self.window, np.ceil(shape / self.net.required_multiple).astype(int)
                         * self.net.required_multiple)
        padded = np.maximum(shape, win)
        xp = np.pad(x, [(0, 0)] + [(0, int(p - s)) for p, s in zip(padded, shape)])
        step = np.maximum((win * (1 - self.overlap)).astype(int), 1)
        starts = []
        for n, w, s in zip(padded, win, step):
            st = list(range(0, max(n - w, 0) + 1, s))
            if st[-1] != n - w:
                st.append(n - w)
            starts.append(st)
        weight = gaussian_window(tuple(win))
        acc = np.zeros((len(self.classes),) + tuple(padded), np.float32)
        wsum = np.zeros(tuple(padded), np.float32)
        for i in starts[0]:
            for j in starts[1]:
                for k in starts[2]:
                    sl = (slice(i, i + win[0]), slice(j, j + win[1]), slice(k, k + win[2]))
                    p = self._forward(xp[(slice(None),) + sl])
                    acc[(slice(None),) + sl] += p * weight
                    wsum[sl] += weight
        acc /= wsum
        return acc[(slice(None),) + tuple(slice(0, s) for s in shape)]

    def _predict_slices(self, x: np.ndarray) -> np.ndarray:
        """2.5-D: each axial slice with ``slices`` neighbours of every modality as channels."""
        import torch

        m = self.net.required_multiple
        c, nx, ny, nz = x.shape
        half = self.slices // 2
        px, py = int(np.ceil(nx / m) * m), int(np.ceil(ny / m) * m)
        xp = np.pad(x, [(0, 0), (0, px - nx), (0, py - ny), (half, half)])
        out = np.zeros((len(self.classes), nx, ny, nz), np.float32)
        batch = 8
        for z0 in range(0, nz, batch):
            zs = range(z0, min(z0 + batch, nz))
            stack = np.stack([xp[:, :, :, z:z + self.slices].transpose(0, 3, 1, 2).reshape(-1, px, py)
                              for z in zs])
            t = torch.from_numpy(np.ascontiguousarray(stack)).to(self.device)
            p = torch.softmax(self.net(t), dim=1).float().cpu().numpy()
            out[:, :, :, z0:z0 + len(zs)] = p[:, :, :nx, :ny].transpose(1, 2, 3, 0)
        return out


# ---------------------------------------------------------------------- file level
def _prefix_from(image_file) -> str:
    ents = entities(Path(image_file).name)
    return subject_key(*ents) if ents else "deepmir"


def lesion_probabilities(classes, probs) -> np.ndarray:
    """``(3, X, Y, Z)`` float32: background, CMB and iron probabilities from a model's output
    ``probs`` in its own class order ``classes``, a class the model does not learn being zero (the
    layout the pipeline writes and thresholds)."""
    layout = ("background", "cmb", "iron")
    if list(classes) == list(layout):
        return np.asarray(probs, np.float32)
    out = np.zeros((len(layout),) + tuple(probs.shape[1:]), np.float32)
    for i, name in enumerate(layout):
        if name in classes:
            out[i] = probs[list(classes).index(name)]
    return out


def serves_subsets(record: dict) -> bool:
    """Whether a model serves any non-empty subset of its modalities: trained with modality
    dropout (``training.config.modality_dropout`` > 0 in its record), so that a missing modality,
    given as a zero channel, is something it has seen."""
    cfg = (record.get("training") or {}).get("config") or {}
    return float(cfg.get("modality_dropout") or 0.0) > 0.0


def segment_subject(t2_file, swi_file, qsm_file, mask_file, out_dir, model_file=None, *,
                    tta: bool = False, threads: int | None = None, prefix: str | None = None,
                    predictor: Predictor | None = None) -> dict:
    """Segment one preprocessed subject; write probability maps and a label map.

    All inputs are on one grid (the working grid of ``preprocess_subject``). A modality the model
    does not use may be ``None``, and so may one it needs when it serves subsets. Writes, in ``out_dir``,
    ``{prefix}_space-T2w_label-CMB_probseg.nii.gz``, ``..._label-iron_probseg.nii.gz`` (all zeros
    for a class the model does not have) and ``{prefix}_space-T2w_desc-deepmir_dseg.nii.gz``
    (uint8: 0 background, 1 CMB, 2 iron) with a JSON sidecar naming the model.
    ``prefix`` defaults to the ``sub-``/``ses-`` entities of the first image given (T2w, else SWI, else QSM).

    Returns ``{"probseg_cmb": Path, "probseg_iron": Path, "dseg": Path}``.
    """
    t0 = time.perf_counter()
    pred = predictor or Predictor.from_file(model_file, tta=tta, threads=threads)
    files = {"t2": t2_file, "swi": swi_file, "qsm": qsm_file}
    pred.check_modalities({m for m, f in files.items() if f is not None})
    what = MODALITY_NAMES
    present = [m for m in pred.modalities if files.get(m) is not None]
    ref = load_image(files[present[0]], what=what[present[0]])
    volumes = {}
    for m in present:
        img = ref if m == present[0] else load_image(files[m], what=what[m])
        if img.shape != ref.shape or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise InputError(files[m], f"{what[m]} is not on the same grid as "
                                       f"{Path(files[present[0]]).name} (shape {img.shape} vs "
                                       f"{ref.shape}); give preprocessed images in one space")
        volumes[m] = np.asarray(img.dataobj, dtype=np.float32)
    mask = None
    if mask_file is not None:
        mask = load_mask(mask_file, ref.shape, "images")
    probs = pred.predict(volumes, mask, tta=tta)
    lab = pred.labels(probs, mask)
    dseg = np.zeros(lab.shape, np.uint8)
    for i, name in enumerate(pred.classes):
        if name in DSEG_LABELS:
            dseg[lab == i] = DSEG_LABELS[name]

    out_dir = Path(out_dir)
    prefix = prefix or _prefix_from(next(f for f in (t2_file, swi_file, qsm_file) if f is not None))
    affine = ref.affine
    out = {}
    layout = lesion_probabilities(pred.classes, probs)
    for i, name in ((1, "cmb"), (2, "iron")):
        out[f"probseg_{name}"] = save_nifti(layout[i], affine, out_dir / job_file_name(f"probseg_{name}", prefix))
    out["dseg"] = save_nifti(dseg, affine, out_dir / job_file_name("dseg", prefix))
    rec = pred.record
    write_json({
        "Description": "DEEPMIR lesion segmentation: 0 background, 1 cerebral microbleed, 2 iron deposit",
        "Labels": {str(v): k for k, v in DSEG_LABELS.items()},
        "ModelClasses": pred.classes,
        "ModelWeightsSHA256": rec.get("weights_sha256"),
        "ModelFile": Path(pred.source).name,
        "ModalitiesUsed": present,
        "TestTimeAugmentation": pred.uses_tta(tta),
        "PackageVersion": _version(),
        "ElapsedSeconds": round(time.perf_counter() - t0, 2),
    }, out_dir / job_file_name("dseg_json", prefix))
    return out


def _version() -> str:
    from deepmir_tasks import __version__
    return __version__
