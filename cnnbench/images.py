"""Images on the device, ready to slice into batches: one tensor per split, normalised with the training
part's statistics, in channels_last (what oneDNN and cuDNN convolutions prefer)."""

from __future__ import annotations

import torch

from cnnbench.augment import augment, is_active


class Images:
    """Images on the device, ready to slice into batches: `images[idx]` -> (B, C, H, W) float, normalised,
    channels_last. Without augmentation the whole set is normalised once, so a batch is a single gather;
    with augmentation it stays uint8 and each batch is converted, augmented and normalised on the fly."""

    PRENORMALISE_MAX_BYTES = 2 << 30  # beyond this, keep uint8 (4x smaller) and normalise per batch

    def __init__(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, augment_cfg: dict | None = None,
                 gen: torch.Generator | None = None):
        self.mean, self.std, self.gen = mean, std, gen
        self.augment_cfg = augment_cfg if augment_cfg and is_active(augment_cfg) else None
        self.raw = self.augment_cfg is not None or x.numel() * 4 > self.PRENORMALISE_MAX_BYTES
        self.x = x if self.raw else self._normalise(x.float().div_(255))

    @classmethod
    def stats(cls, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of uint8 images (shape (1, C, 1, 1)), from the training part only."""
        xf = x.float().div_(255)
        return xf.mean(dim=(0, 2, 3), keepdim=True), xf.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        if not self.raw:
            return self.x[idx]
        x = self.x[idx].float().div_(255)
        if self.augment_cfg:
            x = augment(x, self.augment_cfg, self.gen)
        return self._normalise(x)
