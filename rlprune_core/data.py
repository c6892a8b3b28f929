"""Datasets as tensors: every source becomes normalised float tensors split into train / val / test.

The validation split is carved from the training set (it drives the prune search); the test set is only
ever used for reported accuracy. Images are held whole in memory so the loader can serve them from the
training device and augment in batches.
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError
from .spec import DatasetSpec

SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 4000, 1000
DIGITS_TRAIN = 1437  # scikit-learn's first 1437 digits train, the last 360 test


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


def load_dataset(spec: DatasetSpec, seed: int) -> Dataset:
    """Load, resize, normalise and split the dataset a spec names."""
    loaders = {
        "cifar10": _cifar, "cifar100": _cifar, "digits": _digits,
        "synthetic": _synthetic, "imagefolder": _imagefolder,
    }
    raw = loaders[spec.name](spec, seed)
    train_x, train_y = _resize(raw.train_x, spec.image_size), raw.train_y
    test_x, test_y = _resize(raw.test_x, spec.image_size), raw.test_y

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_y), generator=generator)
    if spec.max_train_samples is not None:
        order = order[: spec.max_train_samples]
    n_val = max(1, round(len(order) * spec.val_fraction))
    if len(order) - n_val < 1:
        raise DataError("dataset.val_fraction leaves no training images")
    val_idx, train_idx = order[:n_val], order[n_val:]

    mean = train_x[train_idx].mean(dim=(0, 2, 3))
    std = train_x[train_idx].std(dim=(0, 2, 3)).clamp_min(1e-6)

    def normalise(x: Tensor) -> Tensor:
        return ((x - mean[:, None, None]) / std[:, None, None]).contiguous()

    contract = InputContract(
        channels=train_x.shape[1], size=spec.image_size, mean=mean.tolist(), std=std.tolist(),
        resize=None if raw.native_size == spec.image_size else "bilinear",
    )
    return Dataset(
        train=Split(normalise(train_x[train_idx]), train_y[train_idx]),
        val=Split(normalise(train_x[val_idx]), train_y[val_idx]),
        test=Split(normalise(test_x), test_y),
        classes=raw.classes, contract=contract, flip=raw.flip,
    )


@dataclass
class _Raw:
    """A source's images as float NCHW in [0, 1], before resizing, splitting and normalising."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    native_size: int | None  # None when the source's images come in several sizes
    flip: bool


def _labels(targets) -> Tensor:
    return torch.as_tensor(targets, dtype=torch.int64)


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _to_float(images: np.ndarray | Tensor) -> Tensor:
    """uint8 NHWC/NCHW pixels -> float NCHW in [0, 1]."""
    tensor = torch.as_tensor(np.asarray(images))
    if tensor.ndim == 4 and tensor.shape[-1] in (1, 3) and tensor.shape[1] not in (1, 3):
        tensor = tensor.permute(0, 3, 1, 2)
    return tensor.float().div_(255.0)


def _cifar(spec: DatasetSpec, seed: int):
    from torchvision import datasets

    base = datasets.CIFAR10 if spec.name == "cifar10" else datasets.CIFAR100
    title = "CIFAR-10" if spec.name == "cifar10" else "CIFAR-100"

    class Cifar(base):
        # torchvision checks the md5 of every batch file on each load; a None checksum makes it check that
        # the file exists instead, so batches re-packed in the same on-disk format (as the tests write)
        # load too. A download is still verified: torchvision checks the archive's md5 before extracting.
        train_list: ClassVar = [[name, None] for name, _ in base.train_list]
        test_list: ClassVar = [[name, None] for name, _ in base.test_list]
        meta: ClassVar = {**base.meta, "md5": None}

    root = Path(spec.root).expanduser()
    try:
        train = Cifar(str(root), train=True, download=spec.download)
        test = Cifar(str(root), train=False, download=spec.download)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"could not download {title} into {root}: {getattr(exc, 'reason', exc)}. "
            f"Download {base.filename} from {base.url} and extract it there."
        ) from exc
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        folder = root / base.base_folder
        raise DataError(
            f"{title} not found: looked for the python-format batches in {folder}. Set dataset.download: true "
            f"to fetch them, or extract {base.filename} into {root}."
        ) from exc
    return _Raw(_to_float(train.data), _labels(train.targets), _to_float(test.data), _labels(test.targets),
                list(train.classes), native_size=32, flip=True)


def _digits(spec: DatasetSpec, seed: int):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = _labels(digits.target)
    classes = [str(c) for c in digits.target_names]
    # A mirrored digit is a different glyph, so no flips.
    return _Raw(images[:DIGITS_TRAIN], labels[:DIGITS_TRAIN], images[DIGITS_TRAIN:], labels[DIGITS_TRAIN:],
                classes, native_size=8, flip=False)


def _synthetic(spec: DatasetSpec, seed: int):
    """Class prototypes made of smooth random patterns, seen through shifts, contrast changes and noise.

    Deterministic in the seed and learnable (a small convnet gets far above the 10 % of chance), yet not
    trivially separable pixel by pixel, so pruning has something to lose.
    """
    generator = torch.Generator().manual_seed(seed)
    size = spec.image_size
    coarse = torch.rand(SYNTHETIC_CLASSES, 3, 4, 4, generator=generator)
    prototypes = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)

    def sample(count: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, SYNTHETIC_CLASSES, (count,), generator=generator)
        images = prototypes[labels]
        shifts = torch.randint(-size // 8, size // 8 + 1, (count, 2), generator=generator)
        images = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2))
                              for img, (dy, dx) in zip(images, shifts, strict=True)])
        contrast = 0.6 + 0.8 * torch.rand(count, 1, 1, 1, generator=generator)
        noise = 0.25 * torch.randn(images.shape, generator=generator)
        return (0.5 + contrast * (images - 0.5) + noise).clamp_(0, 1), labels

    train_x, train_y = sample(SYNTHETIC_TRAIN)
    test_x, test_y = sample(SYNTHETIC_TEST)
    classes = [f"class{i}" for i in range(SYNTHETIC_CLASSES)]
    return _Raw(train_x, train_y, test_x, test_y, classes, native_size=size, flip=False)


def _imagefolder(spec: DatasetSpec, seed: int):
    from torchvision import datasets
    from torchvision.transforms.functional import pil_to_tensor, resize

    root = Path(spec.root).expanduser()
    splits = {}
    sizes: set[tuple[int, int]] = set()
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"imagefolder dataset needs {folder}/<class>/<image> (and the same under "
                            f"{root / ('test' if split == 'train' else 'train')}); {folder} does not exist")
        try:
            dataset = datasets.ImageFolder(str(folder))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"cannot read images under {folder}: {exc}") from exc
        images = []
        for path, _ in dataset.samples:
            image = pil_to_tensor(dataset.loader(path))
            sizes.add(tuple(image.shape[-2:]))
            if image.shape[-2:] != (spec.image_size, spec.image_size):
                image = resize(image, [spec.image_size, spec.image_size], antialias=True)
            images.append(image)
        splits[split] = (torch.stack(images).float().div_(255.0),
                         _labels(dataset.targets), dataset.classes)
    (train_x, train_y, classes), (test_x, test_y, test_classes) = splits["train"], splits["test"]
    if classes != test_classes:
        raise DataError(f"{root}: train/ and test/ must hold the same class folders")
    (height, width), *others = sizes
    native = height if not others and height == width else None
    return _Raw(train_x, train_y, test_x, test_y, classes, native_size=native, flip=True)
