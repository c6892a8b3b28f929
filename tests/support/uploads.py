"""Uploads as a client sends them: image-folder archives of a few tiny PNGs, and a job that trains on one."""

from __future__ import annotations

import io
import tarfile

import httpx
import numpy as np
from PIL import Image

from ..conftest import tiny_spec


def png(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def image_folder(per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog")) -> dict[str, bytes]:
    return {f"{split}/{name}/{i}.png": png(hash((split, name, i)) % 1000)
            for split, count in (("train", per_class), ("test", 2)) for name in classes for i in range(count)}


def tar(files: dict[str, bytes], gz: bool = False, extra: list[tarfile.TarInfo] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return out.getvalue()


def post_raw(client: httpx.Client, path: str, body: bytes, media_type: str) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": media_type})


def job(dataset_root: str, checkpoint: str | None = None) -> dict:
    """A job small enough to run in seconds on a 16x16 image folder (VGG needs 32x32: a ResNet-20 here)."""
    return tiny_spec(model={"arch": "resnet20", "width": 0.25, "checkpoint": checkpoint},
                     dataset={"name": "imagefolder", "root": dataset_root, "image_size": 16},
                     pretrain={"epochs": 1, "batch_size": 8}, finetune={"epochs": 1, "batch_size": 8},
                     ).model_dump(mode="json")
