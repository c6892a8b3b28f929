"""How much memory a job takes, worked out from the spec alone: its dataset, and training its model.

A service checks this before it accepts or starts a job, so a spec cannot make a worker allocate more than
the machine has (``synthetic`` at ``image_size`` 512 needs about 32 GB to load; a VGG-16 at width 4 on
128-pixel images at batch 1,437 asks for 24 GB in its first layer alone). It imports neither torch nor
anything heavy, so the API can use it; :func:`rlprune_core.data.load_dataset` applies the same dataset
figures before it allocates anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import get_args

from .architectures import LibraryArch
from .errors import ResourceLimitError
from .spec import DatasetSpec, JobSpec

SIZES = Path(__file__).with_name("models") / "sizes.json"  # written by rlprune_core.models.sizes
# Training keeps the weights, their gradients and the optimizer's momentum; finetuning adds the teacher's
# weights, and the search a masked copy: five copies of the parameters at most.
PARAMETER_COPIES = 5

FLOAT_BYTES = 4  # images are held as float32
CHUNK_BYTES = 16 * 2**20  # images are converted, resized and normalised this many bytes at a time
# The chunks in flight (a converted chunk, its resized copy and a few temporaries of that size) plus the
# synthetic source's ten class prototypes, which take 31.5 MB at image_size 512.
WORKING_BYTES = 128 * 2**20
IMAGEFOLDER_CHANNELS = 3  # every image is decoded as RGB

SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 4000, 1000
DIGITS_TRAIN, DIGITS_TEST = 1437, 360  # scikit-learn's first 1437 digits train, the last 360 test


@dataclass(frozen=True)
class _Source:
    images: int  # train + test
    channels: int
    held_per_image: int  # bytes per image of the source's own copy, held while it is converted to floats


_SOURCES = {
    "cifar10": _Source(50_000 + 10_000, 3, 3 * 32 * 32),  # uint8 rows of the python batches
    "cifar100": _Source(50_000 + 10_000, 3, 3 * 32 * 32),
    "digits": _Source(DIGITS_TRAIN + DIGITS_TEST, 1, 2 * 8 * 8 * 8),  # scikit-learn's float64 images, twice
    "synthetic": _Source(SYNTHETIC_TRAIN + SYNTHETIC_TEST, 3, 0),  # generated straight into its floats
}


def loaded_bytes(images: int, channels: int, image_size: int, held_per_image: int = 0) -> int:
    """Peak host memory of loading ``images`` images at ``image_size``, in bytes.

    The loaded images take ``images * channels * image_size**2 * 4`` bytes (float32). The peak is twice that:
    normalising works in place, but the train and validation splits are then gathered (copied) out of the
    training images, which are freed only afterwards. While a source is being read, its own copy of the
    pixels (``held_per_image``) sits next to the float images, and a bounded working set (``WORKING_BYTES``)
    comes on top. ``max_train_samples`` does not lower it: every image is loaded before the subset is drawn.
    """
    floats = images * channels * image_size * image_size * FLOAT_BYTES
    return max(2 * floats, floats + images * held_per_image) + WORKING_BYTES


def dataset_bytes(spec: DatasetSpec) -> int | None:
    """Peak host memory of loading the dataset ``spec`` names; None for ``imagefolder``, whose image count
    is known only once its files are listed (``load_dataset`` checks it then, before decoding any)."""
    source = _SOURCES.get(spec.name)
    if source is None:
        return None
    return loaded_bytes(source.images, source.channels, spec.image_size, source.held_per_image)


def check_dataset_bytes(needed: int, limit: int | None, what: str) -> None:
    """Refuse a dataset that needs more than ``limit`` bytes; ``what`` says which images, in spec terms."""
    if limit is not None and needed > limit:
        raise ResourceLimitError(
            f"dataset.image_size: {what} would take about {math.ceil(needed / 1e6):,} MB of memory to load, "
            f"over the limit of {limit // 10**6:,} MB here; use a smaller dataset.image_size"
        )


@dataclass(frozen=True)
class TrainingFootprint:
    """Peak memory of training the job's model, in bytes: its parameters' copies and the activations autograd
    keeps for the largest batch at the image size (a lower bound of what a framework allocates)."""

    parameters: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.activations


@cache
def _sizes() -> dict[str, dict[str, float]]:
    return json.loads(SIZES.read_text())


def training_bytes(spec: JobSpec) -> TrainingFootprint | None:
    """What training ``spec``'s model needs; None for an architecture the size table does not know."""
    sizes = _sizes().get(spec.model.arch)
    if sizes is None:
        return None
    # The built-in CIFAR models scale every layer's channels by the width: params by its square.
    width = 1.0 if spec.model.arch in get_args(LibraryArch) else spec.model.width
    batch = max(spec.pretrain.batch_size if spec.pretrain.epochs else 0, spec.finetune.batch_size)
    pixels = spec.dataset.image_size**2
    activations = batch * pixels * sizes["activations_per_pixel"] * width * FLOAT_BYTES
    return TrainingFootprint(int(PARAMETER_COPIES * sizes["params"] * width**2 * FLOAT_BYTES), int(activations))
