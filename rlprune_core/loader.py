"""Mini-batches served from tensors on the training device, augmented a whole batch at a time.

Per-image Python transforms dominate small-model training time on CPU and starve a GPU; cropping and
flipping a batch with one gather keeps the hot path in tensor ops (the approach of cifar10-airbench).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import Split

PAD = 4


def augment(images: Tensor, generator: torch.Generator, flip: bool, pad: int = PAD) -> Tensor:
    """Random crop after zero padding by ``pad`` pixels, and a random horizontal flip, per image."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w, device=images.device)
    if flip:
        flipped = torch.rand(n, generator=generator, device=generator.device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channels, rows, cols[:, None, None, :]]


class BatchLoader:
    """Iterates a :class:`Split` in batches; shuffles and augments only when training."""

    def __init__(self, split: Split, batch_size: int, *, train: bool = False, flip: bool = True,
                 seed: int = 0):
        self.split = split
        self.batch_size = batch_size
        self.train = train
        self.flip = flip
        self.generator = torch.Generator(device=split.images.device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.split)
        # Training drops a ragged last batch (BatchNorm on a handful of images is noisy), unless it is all there is.
        return max(1, n // self.batch_size) if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.split)
        if self.train:
            order = torch.randperm(n, generator=self.generator, device=self.generator.device)
        else:
            order = torch.arange(n, device=self.split.images.device)
        for index in range(len(self)):
            take = order[index * self.batch_size: (index + 1) * self.batch_size]
            images, labels = self.split.images[take], self.split.labels[take]
            if self.train:
                images = augment(images, self.generator, self.flip)
            yield images, labels
