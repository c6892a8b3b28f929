"""Checks an uploaded dataset archive (tar, tar.gz or zip in image-folder layout) and extracts it.

Nothing is trusted before it is extracted: a member with an absolute path or ``..``, a symlink or hardlink,
a device or FIFO is refused; sizes are counted as bytes are written, never taken from the headers, so a
member that inflates past its cap (a zip or tar bomb) stops extraction at the cap. Extraction goes to a
scratch folder that the caller removes on any refusal, so a refused archive leaves nothing behind.
Messages name the member, never a server path.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from rlprune_core.images import SUFFIXES as IMAGE_SUFFIXES

SPLITS = ("train", "test", "val")  # val is optional
SKIPPED = "__MACOSX"  # macOS archivers' resource forks, like dot files: not extracted
CHUNK = 1 << 16
MAX_CLASS_NAME = 100  # characters: class names travel into model.json, reports and API answers


class BadUpload(ValueError):
    """An upload refused for what it holds; ``status`` is 413 for a size cap, 507 past the tenant's quota,
    else 422."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class Limits:
    files: int
    member_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Dataset:
    root: Path  # the extracted folder holding train/ and test/
    classes: list[str]
    counts: dict[str, int]
    images: list[Path]  # every image, for the decoding check


# reserve(bytes): count that many more bytes against the tenant's quota, or raise BadUpload(507)
Reserve = Callable[[int], None]


def _shown(name: str) -> str:
    return repr(name[:200])


@dataclass(frozen=True)
class _Member:
    name: str
    is_dir: bool
    opener: object  # () -> readable binary stream; None for a folder


def _tar_members(archive: tarfile.TarFile, scratch: Path) -> Iterator[_Member]:
    for member in archive:
        if member.issym() or member.islnk():
            raise BadUpload(f"member {_shown(member.name)} is a link; links are not accepted")
        if not (member.isfile() or member.isdir()):
            raise BadUpload(f"member {_shown(member.name)} is a device, FIFO or other special file")
        try:  # the standard library's own check, on top of the ones here
            tarfile.data_filter(member, str(scratch))
        except tarfile.FilterError as exc:  # its message holds the server path: never passed on
            raise BadUpload(f"member {_shown(member.name)} would be extracted outside the archive") from exc
        yield _Member(member.name, member.isdir(), lambda m=member: archive.extractfile(m))


def _zip_members(archive: zipfile.ZipFile) -> Iterator[_Member]:
    for info in archive.infolist():
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no Unix file type
        if kind == stat.S_IFLNK:
            raise BadUpload(f"member {_shown(info.filename)} is a link; links are not accepted")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BadUpload(f"member {_shown(info.filename)} is a device, FIFO or other special file")
        yield _Member(info.filename, info.is_dir(), lambda i=info: archive.open(i))


@contextmanager
def _members(path: Path, scratch: Path) -> Iterator[Iterator[_Member]]:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                yield _zip_members(archive)
        elif tarfile.is_tarfile(path):
            with tarfile.open(path, mode="r:*") as archive:
                yield _tar_members(archive, scratch)
        else:
            raise BadUpload("not a tar, tar.gz or zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
        # corrupt data, a truncated stream, a bad CRC, an encrypted zip member
        raise BadUpload("the archive is corrupt or truncated") from exc


def _relative(name: str) -> PurePosixPath | None:
    """The member's path inside the archive, or None for one that is not extracted."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):  # /etc/x, or a drive: C:/x
        raise BadUpload(f"member {_shown(name)} has an absolute path")
    if ".." in path.parts:
        raise BadUpload(f"member {_shown(name)} has '..' in its path")
    if not path.parts or any(part.startswith(".") or part == SKIPPED for part in path.parts):
        return None
    return path


def _copy(source: IO[bytes], target: Path, name: str, limits: Limits, written: int, reserve: Reserve) -> int:
    """Copy one member, counting what is actually written against both caps and the tenant's quota (each
    chunk reserved before it is written); returns the new total."""
    size = 0
    try:
        with target.open("xb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > limits.member_bytes:
                    raise BadUpload(f"member {_shown(name)} is larger than {limits.member_bytes} bytes "
                                    "once extracted", 413)
                if written + size > limits.total_bytes:
                    raise BadUpload(f"the archive is larger than {limits.total_bytes} bytes once "
                                    f"extracted (at member {_shown(name)})", 413)
                reserve(len(chunk))
                out.write(chunk)
    except FileExistsError as exc:
        raise BadUpload(f"member {_shown(name)} appears twice") from exc
    return written + size


def extract(path: Path, scratch: Path, limits: Limits, reserve: Reserve = lambda _bytes: None) -> int:
    """Extract the archive at ``path`` into ``scratch`` (an empty folder); returns the bytes written."""
    written = count = 0
    with _members(path, scratch) as members:
        for member in members:
            count += 1
            if count > limits.files:
                raise BadUpload(f"the archive has more than {limits.files} members")
            relative = _relative(member.name)
            if relative is None:
                continue
            target = scratch.joinpath(*relative.parts)
            try:
                if member.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with member.opener() as source:
                    written = _copy(source, target, member.name, limits, written, reserve)
            except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
                raise BadUpload(f"member {_shown(member.name)} clashes with another member") from exc
    return written


def _root(scratch: Path) -> Path:
    """The folder holding the splits: the archive's top level, or its only folder (an archive of a folder)."""
    entries = list(scratch.iterdir())
    if not any(e.name in SPLITS for e in entries) and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return scratch


def _class_name(split: str, name: str) -> str:
    """A class folder's name, which becomes a class name: printable text of at most MAX_CLASS_NAME characters."""
    if len(name) > MAX_CLASS_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadUpload(f"the class folder {_shown(f'{split}/{name}')} needs a name of at most {MAX_CLASS_NAME} "
                        "printable characters")
    return name


def check_layout(scratch: Path) -> Dataset:
    """train/<class>/… and test/<class>/… (and val/ if present) with the same classes, named in printable
    text, and an image file or more in each class (decoding them is :mod:`api.uploads.checking`'s job)."""
    root = _root(scratch)
    for entry in root.iterdir():
        if entry.name not in SPLITS or not entry.is_dir():
            raise BadUpload(f"{_shown(entry.name)} at the top of the archive; only the folders train/, "
                            "test/ and optionally val/ belong there")
    classes: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    images: list[Path] = []
    for split in (s for s in SPLITS if (root / s).is_dir() or s != "val"):
        folder = root / split
        if not folder.is_dir():
            raise BadUpload(f"the archive has no {split}/ folder; an image-folder dataset needs "
                            "train/<class>/<image> and test/<class>/<image>")
        stray = next((e for e in folder.iterdir() if not e.is_dir()), None)
        if stray is not None:
            raise BadUpload(f"{_shown(f'{split}/{stray.name}')} is not inside a class folder")
        classes[split] = sorted(_class_name(split, e.name) for e in folder.iterdir())
        counts[split] = 0
        for class_folder in sorted(folder.iterdir()):
            files = sorted(p for p in class_folder.rglob("*") if p.is_file())
            other = next((f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES), None)
            if other is not None:
                raise BadUpload(f"{_shown(other.relative_to(root).as_posix())} is not an image file "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            if not files:
                raise BadUpload(f"the class folder {_shown(f'{split}/{class_folder.name}')} has no images")
            counts[split] += len(files)
            images += files
    for split in classes:
        if classes[split] != classes["train"]:
            raise BadUpload(f"{split}/ and train/ must hold the same class folders")
    return Dataset(root, classes["train"], counts, images)
