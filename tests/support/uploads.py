"""Uploads as a client sends them: image-folder archives of a few tiny PNGs, and a job that trains on one;
and, for the fuzzer, archives of any members at all."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import httpx
import numpy as np
from hypothesis import strategies as st
from PIL import Image

from .specs import tiny_spec


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


def zipped(files: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    """A zip of ``files``; ``modes`` gives some members a Unix file type and mode, as Info-ZIP records it."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.create_system, info.external_attr = 3, modes[name] << 16
            archive.writestr(info, data)
    return out.getvalue()


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    """A tar member that is not a regular file: a link to ``target``, a FIFO, a device, a folder."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


# Member names a dataset archive could hold: a valid layout, the escapes the upload must refuse, and any text.
_NAMES = st.one_of(
    st.sampled_from(["train/cat/0.png", "train/dog/0.png", "test/cat/0.png", "test/dog/0.png", "train/cat/",
                     "../escape.png", "/etc/cron.d/x.png", "train/cat/../../../x.png", "test/bird/0.png",
                     "train//cat/1.png", "./train/dog/1.png", "train/cat/notes.txt", "train/cat/\u00e9t\u00e9.png"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40))
_CONTENTS = st.one_of(st.sampled_from([png(0), png(1, size=16), b"", b"\x89PNG\r\n\x1a\n garbage"]),
                      st.binary(max_size=512))
_MEMBERS = st.dictionaries(_NAMES, _CONTENTS, max_size=12)
_TAR_SPECIALS = st.lists(st.builds(link, _NAMES, _NAMES, st.sampled_from(
    [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.DIRTYPE])), max_size=3)
_ZIP_MODES = st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFCHR | 0o600,
                              stat.S_IFDIR | 0o755, stat.S_IFREG | 0o4755])


@st.composite
def _zip_archives(draw: st.DrawFn) -> bytes:
    files = draw(_MEMBERS)
    modes = {name: draw(_ZIP_MODES) for name in files if draw(st.booleans())}
    return zipped(files, modes)


def fuzzed_archives(kind: str) -> st.SearchStrategy[bytes]:
    """Well-formed archives (``tar``, ``tar.gz`` or ``zip``) of hostile and ordinary members, or any bytes: what
    the fuzzer sends as a dataset upload, so that it reaches the member checks, not only the format check."""
    archives = (_zip_archives() if kind == "zip"
                else st.builds(tar, _MEMBERS, st.just(kind == "tar.gz"), _TAR_SPECIALS))
    return st.one_of(archives, st.binary(max_size=1024))


def post_raw(client: httpx.Client, path: str, body: bytes, media_type: str) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": media_type})


def job(dataset_root: str, checkpoint: str | None = None) -> dict:
    """A job small enough to run in seconds on a 16x16 image folder (VGG needs 32x32: a ResNet-20 here)."""
    return tiny_spec(model={"arch": "resnet20", "width": 0.25, "checkpoint": checkpoint},
                     dataset={"name": "imagefolder", "root": dataset_root, "image_size": 16},
                     pretrain={"epochs": 1, "batch_size": 8}, finetune={"epochs": 1, "batch_size": 8},
                     ).model_dump(mode="json")
