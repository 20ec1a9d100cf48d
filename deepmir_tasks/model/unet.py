"""The DEEPMIR U-Net: an ``nn.Module`` and nothing else.

A U-Net with a configurable number of resolution levels (default 5, one more than the usual
four, after Rashid et al. 2021) so that lesions of a few voxels still have a path through the
full-resolution levels while the deepest level sees a wide context. Each level has two
3×3×3 convolutions, each followed by a normalisation and a LeakyReLU; downsampling is a strided
convolution, upsampling a transposed convolution, and skips are concatenated.

The input channels are any subset of the modalities (``t2``, ``swi``, ``qsm``) in the order the
model record lists them; the head has one output channel per class including background
(``("background", "cmb")``, ``("background", "iron")`` or ``("background", "cmb", "iron")``),
and returns logits (softmax over the class axis gives probabilities).

``dim=3`` is the default. ``dim=2`` builds the same network from 2-D layers for a 2.5-D variant
(a stack of neighbouring slices of every modality as channels; see ``predictor``).

The default normalisation is batch normalisation: in evaluation mode it is a fixed per-channel
affine map, so the output at a voxel depends only on its receptive field, and whole-volume
inference gives the same answer as sliding windows over a model trained on small patches
(instance normalisation would recompute statistics over whatever field of view it is shown).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet"]


def _layers(dim: int):
    if dim == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.InstanceNorm3d
    if dim == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d
    raise ValueError(f"dim must be 2 or 3, got {dim}")


def _norm(kind: str, dim: int, channels: int) -> nn.Module:
    _, _, bn, inorm = _layers(dim)
    if kind == "batch":
        return bn(channels)
    if kind == "instance":
        return inorm(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be batch, instance, group or none, got {kind!r}")


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, dim: int, norm: str, stride: int = 1):
        conv = _layers(dim)[0]
        super().__init__(
            conv(c_in, c_out, 3, stride=stride, padding=1, bias=norm == "none"),
            _norm(norm, dim, c_out),
            nn.LeakyReLU(0.01, inplace=True),
            conv(c_out, c_out, 3, padding=1, bias=norm == "none"),
            _norm(norm, dim, c_out),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet(nn.Module):
    """U-Net with ``levels`` resolution levels and ``base`` features at full resolution.

    Args:
        in_channels: number of input channels (modalities, times slices for 2.5-D).
        n_classes: number of output channels (classes including background).
        levels: resolution levels (>= 2); inputs must be a multiple of ``2**(levels-1)``
            along each spatial axis (``required_multiple``).
        base: feature maps at full resolution; doubled at each level down, capped at ``max_width``.
        dim: 3 for a 3-D network, 2 for a 2-D (2.5-D) one.
        norm: ``"batch"`` (default), ``"instance"``, ``"group"`` or ``"none"``.
        max_width: cap on the number of feature maps at any level.
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 3, levels: int = 5, base: int = 16,
                 dim: int = 3, norm: str = "batch", max_width: int = 320):
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        if in_channels < 1 or n_classes < 2 or base < 1:
            raise ValueError("need in_channels >= 1, n_classes >= 2 (background + classes), base >= 1")
        conv, convt, _, _ = _layers(dim)
        self.in_channels, self.n_classes = in_channels, n_classes
        self.levels, self.base, self.dim, self.norm = levels, base, dim, norm
        widths = [min(base * 2 ** i, max_width) for i in range(levels)]
        self.widths = widths
        self.encoder = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            self.encoder.append(_ConvBlock(c, w, dim, norm, stride=1 if i == 0 else 2))
            c = w
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(levels - 2, -1, -1):
            self.up.append(convt(widths[i + 1], widths[i], 2, stride=2))
            self.decoder.append(_ConvBlock(2 * widths[i], widths[i], dim, norm))
        self.head = conv(widths[0], n_classes, 1)

    @property
    def required_multiple(self) -> int:
        """Spatial sizes must be a multiple of this (``2**(levels-1)``)."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.required_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"spatial shape {tuple(x.shape[2:])} is not a multiple of {m} "
                             f"(levels={self.levels}); pad the input first")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, block in zip(self.up, self.decoder):
            x = up(x)
            x = block(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)
