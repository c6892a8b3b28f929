"""Datasets as tensors: every source becomes normalised float tensors split into train / val / test.

The validation split is carved from the training set (it drives the prune search); the test set is only
ever used for reported accuracy. Images are held whole in memory so the loader can serve them from the
training device and augment in batches; :mod:`rlprune_core.footprint` says how much memory that takes, and
the loading below is arranged so that figure holds (sources convert a chunk at a time, normalising works in
place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cifar import read_cifar
from .errors import DataError
from .footprint import (
    CHUNK_BYTES,
    DIGITS_TRAIN,
    FLOAT_BYTES,
    IMAGEFOLDER_CHANNELS,
    SYNTHETIC_CLASSES,
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    check_dataset_bytes,
    dataset_bytes,
    loaded_bytes,
)
from .images import SUFFIXES, limit_pixels, open_image
from .locations import Locations
from .spec import DatasetSpec

STATS_CHUNK_BYTES = 2**20  # images gathered at a time for the channel statistics (see _channel_stats)


@dataclass(frozen=True)
class InputContract:
    """How raw images must be prepared before they reach the model (written to ``model.json``)."""

    channels: int
    size: int
    mean: list[float]
    std: list[float]
    resize: str | None  # interpolation used to reach ``size``, or None when images come at that size
    pixel_range: tuple[float, float] = (0.0, 1.0)  # raw pixels are scaled to this range before normalising

    def to_dict(self) -> dict:
        return {
            "channels": self.channels, "size": self.size, "mean": self.mean, "std": self.std,
            "resize": self.resize, "pixel_range": list(self.pixel_range), "layout": "NCHW", "dtype": "float32",
        }


@dataclass
class Split:
    images: Tensor  # float32, normalised, NCHW
    labels: Tensor  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    contract: InputContract
    flip: bool = field(default=True)  # horizontal flips preserve the label (false for digits)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> Dataset:
        return Dataset(self.train.to(device), self.val.to(device), self.test.to(device), self.classes,
                       self.contract, self.flip)


def load_dataset(spec: DatasetSpec, seed: int, locations: Locations | None = None) -> Dataset:
    """Load, resize, normalise and split the dataset a spec names, reading from where ``locations`` says.

    Without ``locations`` the spec's own root and download flag are used, as on a local machine. When
    ``locations.max_dataset_bytes`` is set, a dataset that would need more is refused before it is loaded.
    """
    locations = locations or Locations.for_dataset(spec)
    needed = dataset_bytes(spec)
    if needed is not None:
        check_dataset_bytes(needed, locations.max_dataset_bytes,
                            f"{spec.name} at {spec.image_size}x{spec.image_size} pixels")
    raw = _LOADERS[spec.name](spec, seed, locations)
    train_x, train_y, test_x, test_y = raw.train_x, raw.train_y, raw.test_x, raw.test_y

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_y), generator=generator)
    if spec.max_train_samples is not None:
        order = order[: spec.max_train_samples]
    n_val = max(1, round(len(order) * spec.val_fraction))
    if len(order) - n_val < 1:
        raise DataError("dataset.val_fraction leaves no training images")
    val_idx, train_idx = order[:n_val], order[n_val:]

    mean, std = _channel_stats(train_x, train_idx)
    for images in (train_x, test_x):  # in place: the split gathers below are the one extra copy (footprint)
        images.sub_(mean[:, None, None]).div_(std[:, None, None])
    contract = InputContract(
        channels=train_x.shape[1], size=spec.image_size, mean=mean.tolist(), std=std.tolist(),
        resize=None if raw.native_size == spec.image_size else "bilinear",
    )
    return Dataset(
        train=Split(train_x[train_idx], train_y[train_idx]),
        val=Split(train_x[val_idx], train_y[val_idx]),
        test=Split(test_x, test_y),
        classes=raw.classes, contract=contract, flip=raw.flip,
    )


@dataclass
class _Raw:
    """A source's images as float NCHW in [0, 1] at the spec's image size, before splitting and normalising."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    native_size: int | None  # None when the source's images come in several sizes
    flip: bool


def _labels(targets) -> Tensor:
    return torch.as_tensor(targets, dtype=torch.int64)


def _chunk_len(channels: int, size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many images of this shape make one chunk of float work (``chunk_bytes``)."""
    return max(1, chunk_bytes // (channels * size * size * FLOAT_BYTES))


def _channel_stats(images: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (unbiased) std of ``images[indices]``, a chunk at a time.

    Gathering the whole subset at once would copy the training images a second time, and so would the
    float64 temporaries of a two-pass formula; each chunk's own mean and variance (``torch.var_mean``, which
    makes no copy of its input) are merged in float64 by Chan et al.'s pairwise update instead, so the only
    temporary is one gathered chunk. That chunk is small (STATS_CHUNK_BYTES): glibc serves blocks of a few
    MB from its heap once larger ones have been freed, and keeps up to tens of MB of them resident
    afterwards, which made the peak of loading vary by 80 MB from run to run with 16 MB chunks.
    """
    pixels = images.shape[-2] * images.shape[-1]
    count = 0
    mean = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros(images.shape[1], dtype=torch.float64)  # sum of squared deviations from the mean
    for chunk in indices.split(_chunk_len(images.shape[1], images.shape[-1], STATS_CHUNK_BYTES)):
        part_var, part_mean = torch.var_mean(images[chunk], dim=(0, 2, 3), correction=0)
        part_count = len(chunk) * pixels
        delta = part_mean.double() - mean
        total = count + part_count
        mean += delta * (part_count / total)
        squares += part_var.double() * part_count + delta**2 * (count * part_count / total)
        count = total
    std = (squares / max(1, count - 1)).sqrt().clamp_min(1e-6)
    return mean.float(), std.float()


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _converted(parts: Sequence[np.ndarray], size: int, scale: float) -> Tensor:
    """Native NCHW pixels (several arrays, one after another) -> one float32 tensor at ``size``, in [0, 1].

    Converted and resized a chunk at a time, so the result is the only full-size float copy.
    """
    channels, native = parts[0].shape[1], parts[0].shape[-1]
    out = torch.empty(sum(len(p) for p in parts), channels, size, size)
    step = _chunk_len(channels, max(size, native))
    at = 0
    for part in parts:
        for start in range(0, len(part), step):
            chunk = torch.from_numpy(np.ascontiguousarray(part[start:start + step])).float().div_(scale)
            out[at:at + len(chunk)] = _resize(chunk, size)
            at += len(chunk)
    return out


def _cifar(spec: DatasetSpec, seed: int, locations: Locations) -> _Raw:
    train_rows, train_labels, test_rows, test_labels, classes = read_cifar(spec, locations)
    return _Raw(_converted(train_rows, spec.image_size, 255.0), _labels(train_labels),
                _converted(test_rows, spec.image_size, 255.0), _labels(test_labels),
                classes, native_size=32, flip=True)


# -- the other sources ----------------------------------------------------------------------------------
def _digits(spec: DatasetSpec, seed: int, locations: Locations) -> _Raw:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[:, None]  # float64 in [0, 16]
    labels = _labels(digits.target)
    classes = [str(c) for c in digits.target_names]
    # A mirrored digit is a different glyph, so no flips.
    return _Raw(_converted([images[:DIGITS_TRAIN]], spec.image_size, 16.0), labels[:DIGITS_TRAIN],
                _converted([images[DIGITS_TRAIN:]], spec.image_size, 16.0), labels[DIGITS_TRAIN:],
                classes, native_size=8, flip=False)


def _synthetic(spec: DatasetSpec, seed: int, locations: Locations) -> _Raw:
    """Class prototypes made of smooth random patterns, seen through shifts, contrast changes and noise.

    Deterministic in the seed and learnable (a small convnet gets far above the 10 % of chance), yet not
    trivially separable pixel by pixel, so pruning has something to lose.
    """
    generator = torch.Generator().manual_seed(seed)
    size = spec.image_size
    coarse = torch.rand(SYNTHETIC_CLASSES, 3, 4, 4, generator=generator)
    prototypes = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    step = _chunk_len(3, size)

    def sample(count: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, SYNTHETIC_CLASSES, (count,), generator=generator)
        shifts = torch.randint(-size // 8, size // 8 + 1, (count, 2), generator=generator)
        contrast = 0.6 + 0.8 * torch.rand(count, 1, 1, 1, generator=generator)
        images = torch.randn((count, 3, size, size), generator=generator).mul_(0.25)  # the noise, then the images
        shifted = torch.empty((min(step, count), 3, size, size))  # one chunk, reused: no per-chunk temporaries
        for start in range(0, count, step):
            part = slice(start, start + step)
            chunk = shifted[: len(labels[part])]
            for row, label, (dy, dx) in zip(chunk, labels[part], shifts[part], strict=True):
                row.copy_(torch.roll(prototypes[label], (int(dy), int(dx)), dims=(1, 2)))
            images[part] += chunk.sub_(0.5).mul_(contrast[part]).add_(0.5)
            images[part].clamp_(0, 1)
        return images, labels

    train_x, train_y = sample(SYNTHETIC_TRAIN)
    test_x, test_y = sample(SYNTHETIC_TEST)
    classes = [f"class{i}" for i in range(SYNTHETIC_CLASSES)]
    return _Raw(train_x, train_y, test_x, test_y, classes, native_size=size, flip=False)


IMAGEFOLDER_LAYOUT = "dataset.root: an imagefolder dataset needs train/<class>/<image> and test/<class>/<image>"


def _list_images(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, class index) of every image under ``root/split``."""
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(root / split)
        return classes, make_dataset(root / split, class_to_idx, extensions=SUFFIXES)
    except OSError as exc:  # torchvision's own message names the folder and lists its class folders
        raise DataError(f"{IMAGEFOLDER_LAYOUT}, with at least one image in every class folder") from exc


def _imagefolder(spec: DatasetSpec, seed: int, locations: Locations) -> _Raw:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor, resize

    root, size = locations.dataset_root, spec.image_size
    limit_pixels()
    (classes, train), (test_classes, test) = _list_images(root, "train"), _list_images(root, "test")
    if classes != test_classes:
        raise DataError("dataset.root: train/ and test/ must hold the same class folders")
    count = len(train) + len(test)
    check_dataset_bytes(loaded_bytes(count, IMAGEFOLDER_CHANNELS, size), locations.max_dataset_bytes,
                        f"the {count:,} images under dataset.root at {size}x{size} pixels")

    sizes: set[tuple[int, int]] = set()

    def decode(samples: list[tuple[str, int]]) -> Tensor:
        out = torch.empty(len(samples), IMAGEFOLDER_CHANNELS, size, size)
        for i, (path, _) in enumerate(samples):
            try:
                with open_image(Path(path)) as opened:
                    image = pil_to_tensor(opened.convert("RGB"))
            except (OSError, ValueError, KeyError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise DataError(f"dataset.root: {Path(path).relative_to(root)} is not an image that can be "
                                f"decoded") from exc
            sizes.add(tuple(image.shape[-2:]))
            if image.shape[-2:] != (size, size):
                image = resize(image, [size, size], antialias=True)
            out[i] = image.float().div_(255.0)
        return out

    train_x, test_x = decode(train), decode(test)
    (height, width), *others = sizes
    native = height if not others and height == width else None
    return _Raw(train_x, _labels([c for _, c in train]), test_x, _labels([c for _, c in test]), classes,
                native_size=native, flip=True)


_LOADERS = {"cifar10": _cifar, "cifar100": _cifar, "digits": _digits, "synthetic": _synthetic,
            "imagefolder": _imagefolder}
