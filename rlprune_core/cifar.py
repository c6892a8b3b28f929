"""CIFAR-10 and CIFAR-100 from the python-format archive, read without trusting its pickles.

torchvision's CIFAR10/CIFAR100 classes read the batch files with a bare ``pickle.load``: whatever a file at
that name holds runs as code when the dataset loads, and its md5 check only helps for the exact files of
the official archive. So the batches are read here, by an unpickler that can build nothing but what the
format holds (dicts, lists, strings and uint8 numpy arrays); torchvision only downloads and unpacks
the archive, checking its md5 first.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .locations import Locations
from .spec import DatasetSpec

CIFAR_ROW = 3 * 32 * 32
MAX_BATCH_FILE = 256 * 2**20  # the largest file of either archive (CIFAR-100's train) is 155 MB
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array rebuilder, wherever this numpy version keeps it


def _empty_array(subtype: type, shape: tuple, dtype: Any) -> np.ndarray:
    """numpy pickles an array as an empty one plus its state (which holds the data and is checked by numpy)."""
    if subtype is not np.ndarray or tuple(shape) != (0,):
        raise pickle.UnpicklingError("not an empty plain array")
    return _RECONSTRUCT(subtype, shape, dtype)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """How protocol-2 pickles spell bytes: ``_codecs.encode(text, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("not latin-1 text")
    return text.encode("latin-1")


_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,  # numpy 1 (and the official files)
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,  # numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): bytes,  # protocol 2 writes an empty bytes as a call of the Python 2 name
    ("builtins", "bytes"): bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch") from None


def _not_cifar(folder: str, name: str) -> DataError:
    return DataError(f"dataset.root: {folder}/{name} is not a CIFAR batch file")


def _read_cifar_file(path: Path, folder: str) -> dict:
    """One pickled dict of the python-format archive, read with :class:`_CifarUnpickler`."""
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_BATCH_FILE:
                raise pickle.UnpicklingError("larger than any CIFAR file")
            entry = _CifarUnpickler(handle, encoding="latin1").load()  # the official files come from Python 2
    except Exception as exc:  # a malformed pickle fails in many ways; all mean the same thing here
        raise _not_cifar(folder, path.name) from exc
    if not isinstance(entry, dict):
        raise _not_cifar(folder, path.name)
    return entry


def _cifar_batch(entry: dict, classes: int) -> tuple[np.ndarray, list[int]] | None:
    """The rows and labels of one batch, or None when the dict does not hold a well-formed batch."""
    rows = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and rows.ndim == 2
            and rows.shape[1] == CIFAR_ROW and isinstance(labels, list) and len(labels) == len(rows)
            and all(type(label) is int and 0 <= label < classes for label in labels)):
        return None
    return rows.reshape(-1, 3, 32, 32), labels


def _download_reason(exc: Exception) -> str:
    """Why a download failed, without the local paths an OSError's text carries."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, OSError):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, tarfile.TarError):
        return "the archive could not be unpacked"
    return "the archive failed its checksum"  # torchvision raises RuntimeError for a bad md5


def read_cifar(spec: DatasetSpec, locations: Locations) -> tuple[list[np.ndarray], list[int], list[np.ndarray],
                                                                  list[int], list[str]]:
    """The train rows, train labels, test rows, test labels and class names of CIFAR-10 or CIFAR-100 (rows as
    uint8 NCHW arrays of 32 x 32 images), downloaded first where the spec asks and the caller allows."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    base = datasets.CIFAR10 if spec.name == "cifar10" else datasets.CIFAR100
    title = "CIFAR-10" if spec.name == "cifar10" else "CIFAR-100"
    root = locations.dataset_root
    folder = root / base.base_folder
    names = [name for name, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    if spec.download and not locations.allow_download:
        raise DataError(f"dataset.download: downloads are not allowed here; set it to false and name a "
                        f"{title} dataset that is already present")
    if spec.download and not all((folder / name).is_file() for name in names):
        try:
            download_and_extract_archive(base.url, root, filename=base.filename, md5=base.tgz_md5)
        except (OSError, RuntimeError, tarfile.TarError) as exc:  # URLError is an OSError
            raise DataError(f"dataset.download: could not download {title} ({_download_reason(exc)}); download "
                            f"{base.filename} from {base.url} and extract it into dataset.root") from exc
    if not all((folder / name).is_file() for name in names):
        raise DataError(f"dataset.root: no {title} python batches there (expected the folder {base.base_folder}); "
                        f"set dataset.download: true to fetch them, or extract {base.filename} into dataset.root")

    meta = _read_cifar_file(folder / base.meta["filename"], base.base_folder)
    classes = meta.get(base.meta["key"])
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise _not_cifar(base.base_folder, base.meta["filename"])

    def split(files: list) -> tuple[list[np.ndarray], list[int]]:
        rows, labels = [], []
        for name, _ in files:
            batch = _cifar_batch(_read_cifar_file(folder / name, base.base_folder), len(classes))
            if batch is None:
                raise _not_cifar(base.base_folder, name)
            rows.append(batch[0])
            labels.extend(batch[1])
        return rows, labels

    (train_rows, train_labels), (test_rows, test_labels) = split(base.train_list), split(base.test_list)
    return train_rows, train_labels, test_rows, test_labels, classes
