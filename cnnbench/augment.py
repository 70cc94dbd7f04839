"""Per-batch augmentation on the training device, on images in [0, 1] before normalisation.

One random affine grid per image covers shift, rotation and shear in a single `grid_sample`; flips and
colour jitter are elementwise. Everything draws from the run's own generator, so runs are repeatable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def is_active(cfg: dict) -> bool:
    return any(bool(v) for v in cfg.values())


def augment(x: torch.Tensor, cfg: dict, gen: torch.Generator) -> torch.Tensor:
    """x: (B, C, H, W) float in [0, 1] -> augmented copy, same shape."""
    b, c, h, w = x.shape
    dev = x.device

    def uniform(limit: float) -> torch.Tensor:  # (B,) in [-limit, limit]
        return (torch.rand(b, generator=gen, device=dev) * 2 - 1) * limit

    if cfg.get("flip"):
        flip = torch.rand(b, generator=gen, device=dev) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if cfg.get("shift") or cfg.get("rotate") or cfg.get("shear"):
        angle = uniform(math.radians(cfg.get("rotate", 0)))
        shear = torch.tan(uniform(math.radians(cfg.get("shear", 0))))
        s = cfg.get("shift", 0)
        shift = torch.randint(-s, s + 1, (2, b), generator=gen, device=dev).float()
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([  # rotation @ x-shear, then translation (affine_grid's units: half-extents)
            torch.stack([cos, cos * shear - sin, shift[0] * 2 / w], dim=1),
            torch.stack([sin, sin * shear + cos, shift[1] * 2 / h], dim=1),
        ], dim=1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.get("brightness"):
        x = x * (1 + uniform(cfg["brightness"]))[:, None, None, None]
    if cfg.get("contrast"):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + uniform(cfg["contrast"]))[:, None, None, None] + mean
    if cfg.get("saturation") and c == 3:
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev)[None, :, None, None]).sum(1, keepdim=True)
        x = (x - grey) * (1 + uniform(cfg["saturation"]))[:, None, None, None] + grey
    return x.clamp_(0, 1)
