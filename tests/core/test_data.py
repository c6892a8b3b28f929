"""Datasets as tensors: every source loads into normalised train/val/test splits, CIFAR from its real on-disk
format without trusting its pickles, image folders, and the memory a dataset may take is checked first."""

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision import datasets

from rlprune_core.data import load_dataset
from rlprune_core.errors import DataError, ResourceLimitError
from rlprune_core.footprint import dataset_bytes, loaded_bytes
from rlprune_core.loader import BatchLoader, augment
from rlprune_core.locations import Locations
from rlprune_core.spec import DatasetSpec

from ..support.datasets import write_cifar10
from ..support.paths import CIFAR10_SUBSET, REPO


def test_cifar10_loads_from_the_real_on_disk_format(tmp_path):
    test_rows = write_cifar10(tmp_path)
    data = load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path), val_fraction=0.1), seed=0)
    assert (len(data.train) + len(data.val), len(data.test)) == (100, 20)
    assert data.classes[0] == "airplane" and data.num_classes == 10
    first = torch.as_tensor(test_rows[0].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(data.contract.mean), torch.tensor(data.contract.std)
    restored = data.test.images[0] * std[:, None, None] + mean[:, None, None]
    assert torch.allclose(restored, first, atol=1e-5)


def python2_batch(rows: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the official archive pickles it: by Python 2 (latin-1 strings) with numpy 1's module names."""

    class Python2Array:
        def __reduce__(self):
            reconstruct, _, state = rows.__reduce__()
            version, shape, dtype, fortran, data = state
            return reconstruct, (np.ndarray, (0,), "b"), (version, shape, dtype, fortran, data.decode("latin-1"))

    text = pickle.dumps({"batch_label": "training batch 1 of 5", "data": Python2Array(), "labels": labels,
                         "filenames": ["a.png"] * len(labels)}, protocol=2)
    return text.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def test_cifar10_loads_batches_pickled_the_way_the_official_archive_is(tmp_path):
    write_cifar10(tmp_path)
    rows = np.random.default_rng(1).integers(0, 256, (20, 3072), dtype=np.uint8)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(python2_batch(rows, [3] * 20))
    data = load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    assert data.test.labels.tolist() == [3] * 20
    mean, std = torch.tensor(data.contract.mean), torch.tensor(data.contract.std)
    restored = data.test.images[-1] * std[:, None, None] + mean[:, None, None]
    assert torch.allclose(restored, torch.as_tensor(rows[-1].reshape(3, 32, 32)).float() / 255, atol=1e-5)


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["whole file", "inside the batch"])
def test_a_planted_pickle_never_runs(tmp_path, where):
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    payload = RunsCode(marker)
    if where == "inside the batch":
        payload = {"batch_label": "x", "data": payload, "labels": [0], "filenames": []}
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    assert str(caught.value) == "dataset.root: cifar-10-batches-py/data_batch_1 is not a CIFAR batch file"
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a pickle", pickle.dumps([1, 2, 3], protocol=2),
                                     pickle.dumps({"data": np.zeros((2, 5)), "labels": [0, 1]}, protocol=2)])
def test_a_file_that_is_no_cifar_batch_names_the_field_not_the_path(tmp_path, content):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    assert str(caught.value) == "dataset.root: cifar-10-batches-py/test_batch is not a CIFAR batch file"


def test_missing_cifar_names_the_field_and_the_folder_it_expects_but_no_path(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    message = str(caught.value)
    assert message.startswith("dataset.root: no CIFAR-10 python batches there (expected the folder "
                              "cifar-10-batches-py)")
    assert "dataset.download" in message and str(tmp_path) not in message


def test_the_dataset_is_read_where_the_locations_say_not_where_the_spec_says(tmp_path):
    write_cifar10(tmp_path / "resolved")
    spec = DatasetSpec(name="cifar10", root="cifar10")
    data = load_dataset(spec, 0, Locations(tmp_path / "resolved", None, allow_download=False))
    assert len(data.test) == 20


def test_a_download_the_caller_forbids_is_refused_naming_the_field(tmp_path):
    root = tmp_path / "nothing-here"
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetSpec(name="cifar10", root="x", download=True), 0,
                     Locations(root, None, allow_download=False))
    assert str(caught.value).startswith("dataset.download: ") and "nothing-here" not in str(caught.value)
    assert not root.exists()


def test_failed_download_is_one_clear_sentence_without_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.CIFAR100, "url", "http://127.0.0.1:9/cifar-100-python.tar.gz")
    with pytest.raises(DataError, match=r"^dataset\.download: could not download CIFAR-100") as caught:
        load_dataset(DatasetSpec(name="cifar100", root=str(tmp_path), download=True), seed=0)
    assert str(tmp_path) not in str(caught.value)


def test_digits_split_follows_scikit_learn_order():
    data = load_dataset(DatasetSpec(name="digits", image_size=16, val_fraction=0.2), seed=3)
    assert len(data.train) + len(data.val) == 1437 and len(data.test) == 360
    assert data.test.labels.tolist() == load_digits().target[1437:].tolist()
    assert data.test.images.shape == (360, 1, 16, 16)
    assert data.contract.resize == "bilinear" and data.flip is False
    assert abs(float(data.train.images.mean())) < 1e-3  # normalised with the training split's statistics


def test_validation_is_carved_from_train_and_respects_max_train_samples():
    data = load_dataset(DatasetSpec(name="synthetic", max_train_samples=500, val_fraction=0.2), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (400, 100, 1000)


def test_synthetic_is_deterministic_in_the_seed():
    a = load_dataset(DatasetSpec(name="synthetic", image_size=16), seed=5)
    b = load_dataset(DatasetSpec(name="synthetic", image_size=16), seed=5)
    c = load_dataset(DatasetSpec(name="synthetic", image_size=16), seed=6)
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(a.train.images, c.train.images)


@pytest.mark.skipif(not CIFAR10_SUBSET.is_dir(), reason="the CIFAR-10 image-folder sample is not present")
def test_imagefolder_reads_the_cifar10_sample():
    data = load_dataset(DatasetSpec(name="imagefolder", root=str(CIFAR10_SUBSET)), seed=0)
    assert (len(data.train) + len(data.val), len(data.test)) == (5170, 1017)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert data.contract.resize is None and data.train.images.shape[1:] == (3, 32, 32)


def write_images(folder: Path, count: int, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (size, size), (i * 40 % 256, 0, 0)).save(folder / f"{i}.png")


IMAGEFOLDER_LAYOUT = "dataset.root: an imagefolder dataset needs train/<class>/<image> and test/<class>/<image>"


def test_imagefolder_without_test_folder_names_the_layout_not_the_path(tmp_path):
    write_images(tmp_path / "train" / "a", 2)
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetSpec(name="imagefolder", root=str(tmp_path)), seed=0)
    assert str(caught.value).startswith(IMAGEFOLDER_LAYOUT) and str(tmp_path) not in str(caught.value)


def test_imagefolder_errors_never_list_the_class_folders(tmp_path):
    write_images(tmp_path / "train" / "customer-acme", 2)
    (tmp_path / "train" / "secret-project-alpha").mkdir()
    write_images(tmp_path / "test" / "customer-acme", 2)
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetSpec(name="imagefolder", root=str(tmp_path)), seed=0)
    message = str(caught.value)
    assert message.startswith(IMAGEFOLDER_LAYOUT)
    assert "customer-acme" not in message and "secret-project-alpha" not in message and str(tmp_path) not in message


def test_an_image_that_does_not_decode_is_named_inside_the_dataset(tmp_path):
    write_images(tmp_path / "train" / "a", 2)
    write_images(tmp_path / "test" / "a", 2)
    (tmp_path / "test" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetSpec(name="imagefolder", root=str(tmp_path)), seed=0)
    assert str(caught.value) == "dataset.root: test/a/broken.png is not an image that can be decoded"


def test_a_dataset_over_the_memory_limit_is_refused_before_it_is_built():
    spec = DatasetSpec(name="synthetic", image_size=512)
    began = time.perf_counter()
    with pytest.raises(ResourceLimitError) as caught:  # building it would take 31 GB
        load_dataset(spec, 0, Locations(Path("unused"), None, allow_download=False, max_dataset_bytes=10**9))
    assert time.perf_counter() - began < 1.0
    assert str(caught.value).startswith("dataset.image_size: synthetic at 512x512 pixels would take about 31,")
    assert "limit of 1,000 MB" in str(caught.value) and caught.value.code == "resource_limit"


def test_an_imagefolder_over_the_limit_is_refused_after_listing_and_before_decoding(tmp_path):
    write_images(tmp_path / "train" / "a", 3)
    write_images(tmp_path / "test" / "a", 2)
    (tmp_path / "test" / "a" / "broken.png").write_bytes(b"not a png")  # decoding it would fail
    spec = DatasetSpec(name="imagefolder", root="mine", image_size=64)
    limit = loaded_bytes(6, 3, 64) - 1
    with pytest.raises(ResourceLimitError, match=r"^dataset\.image_size: the 6 images under dataset\.root at 64x64"):
        load_dataset(spec, 0, Locations(tmp_path, None, allow_download=False, max_dataset_bytes=limit))


def test_dataset_bytes_counts_every_image_at_the_spec_size():
    def needed(**fields) -> int | None:
        return dataset_bytes(DatasetSpec(**fields))

    assert needed(name="imagefolder") is None
    assert needed(name="cifar10") == needed(name="cifar100") == loaded_bytes(60_000, 3, 32, 3 * 32 * 32)
    assert needed(name="synthetic", image_size=64) == loaded_bytes(5000, 3, 64)
    assert needed(name="synthetic", max_train_samples=100) == needed(name="synthetic")  # all images load first
    assert needed(name="digits", image_size=64) < needed(name="synthetic", image_size=64)
    assert loaded_bytes(5000, 3, 512) > 2 * 5000 * 3 * 512 * 512 * 4


MEASURE_PEAK = """
from pathlib import Path
from rlprune_core.data import load_dataset
from rlprune_core.footprint import dataset_bytes
from rlprune_core.spec import DatasetSpec

def kib(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024

spec = DatasetSpec(name="synthetic", image_size=64)
Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from the current size
before = kib("VmRSS")
data = load_dataset(spec, 0)
print(kib("VmHWM") - before, dataset_bytes(spec))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS counters")
def test_loading_stays_within_the_memory_dataset_bytes_promises():
    result = subprocess.run([sys.executable, "-c", MEASURE_PEAK], capture_output=True, text=True, cwd=REPO,
                            check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    grew, promised = map(int, result.stdout.split())
    assert 5000 * 3 * 64 * 64 * 4 < grew <= promised  # at least the images themselves, at most the promise


def test_augment_crops_and_flips_per_image():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    generator = torch.Generator().manual_seed(0)
    out = augment(images, generator, flip=True, pad=2)
    assert out.shape == images.shape
    unpadded = augment(images, generator, flip=False, pad=0)
    assert torch.equal(unpadded, images)
    # every output pixel is either padding (0) or a pixel of its own image
    for i in range(2):
        assert set(out[i].flatten().tolist()) <= set(images[i].flatten().tolist()) | {0.0}


def test_loader_covers_the_split_once_per_epoch():
    data = load_dataset(DatasetSpec(name="synthetic", image_size=8, max_train_samples=100), seed=0)
    batches = list(BatchLoader(data.test, 64))
    assert sum(len(labels) for _, labels in batches) == len(data.test)
    train_batches = list(BatchLoader(data.train, 32, train=True))
    assert len(train_batches) == len(data.train) // 32 and all(len(y) == 32 for _, y in train_batches)
