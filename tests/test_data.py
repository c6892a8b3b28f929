import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torchvision import datasets

from rlprune_core.data import load_dataset
from rlprune_core.errors import DataError
from rlprune_core.loader import BatchLoader, augment
from rlprune_core.spec import DatasetSpec

from .conftest import CIFAR10_SUBSET


def write_cifar10(root: Path, per_batch: int = 20) -> np.ndarray:
    """Tiny CIFAR-10 in the real on-disk format: pickled dicts of uint8 rows (RRR..GGG..BBB) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    test_rows = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(per_batch)]
        with (folder / name).open("wb") as handle:
            pickle.dump({"batch_label": name, "data": rows, "labels": labels, "filenames": []}, handle, protocol=2)
        if name == "test_batch":
            test_rows = rows
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, handle, protocol=2)
    return test_rows


def test_cifar10_loads_from_the_real_on_disk_format(tmp_path):
    test_rows = write_cifar10(tmp_path)
    data = load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path), val_fraction=0.1), seed=0)
    assert (len(data.train) + len(data.val), len(data.test)) == (100, 20)
    assert data.classes[0] == "airplane" and data.num_classes == 10
    first = torch.as_tensor(test_rows[0].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(data.contract.mean), torch.tensor(data.contract.std)
    restored = data.test.images[0] * std[:, None, None] + mean[:, None, None]
    assert torch.allclose(restored, first, atol=1e-5)


def test_missing_cifar_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    message = str(caught.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "dataset.download" in message


def test_failed_download_is_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.CIFAR100, "url", "http://127.0.0.1:9/cifar-100-python.tar.gz")
    with pytest.raises(DataError, match="could not download CIFAR-100"):
        load_dataset(DatasetSpec(name="cifar100", root=str(tmp_path), download=True), seed=0)


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


def test_imagefolder_without_test_folder_names_it(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="test"):
        load_dataset(DatasetSpec(name="imagefolder", root=str(tmp_path)), seed=0)


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
