"""Datasets written in their real on-disk formats, for the loaders' tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


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
