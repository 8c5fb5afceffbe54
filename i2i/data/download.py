"""Fetching the pix2pix and CycleGAN reference datasets: resumable, verified, safely extracted.

``download_dataset("maps", root)`` leaves ``root/maps/{train,val}``, and
``download_dataset("cyclegan/maps", root)`` ``root/cyclegan/maps/{trainA,trainB,testA,testB}``,
or raises a ``DownloadError`` that says what to do. The CycleGAN sets are named
``cyclegan/NAME`` because maps, facades and cityscapes are pix2pix sets too. The
steps, each safe to interrupt:

1. stream the archive (``NAME.tar.gz``, CycleGAN's ``NAME.zip``) into ``.part``,
   resuming with an HTTP Range request from what an earlier attempt left, then
   rename it (atomic);
2. check its sha256 when the catalogue has one;
3. check every archive member before extracting any: absolute paths, ``..``,
   links and device files are refused;
4. extract into a hidden staging folder, check the layout and image counts,
   then rename the folder into place.

An archive already in ``root`` (fetched by hand) is used as it is. Step 1 is
``fetch_file``, which the model catalogue uses for its downloads too.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from i2i.data.base import IMAGE_SUFFIXES, DataError
from i2i.recipe import DataSection

REFERENCE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"
# The reference publishes no image counts for its CycleGAN zips: each folder must hold images.
CYCLEGAN_SPLITS: dict[str, int | None] = {"trainA": None, "trainB": None, "testA": None, "testB": None}
CHUNK = 1 << 20
# The sets are compressed images, which barely compress again (maps: 1.0x): an archive whose members
# add up to more than this many times its own size is a bomb. Below the floor, any expansion is harmless.
MAX_EXPANSION = 20
EXPANSION_FLOOR = 64 << 20
READ_TIMEOUT = 60.0  # seconds without a byte before a connection counts as stalled (and is retried)


class DownloadError(DataError):
    pass


class DownloadInterrupted(DownloadError):
    exit_code = 130  # as a shell reports Ctrl-C


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    splits: dict[str, int | None]  # split -> expected image count (None: any, at least one)
    url: str = ""
    sha256: str | None = None

    @property
    def source(self) -> str:
        return self.url or REFERENCE_URL.format(name=self.name)

    def archive(self, root: Path) -> Path:
        """Where the download lands: beside the set's folder, named as published."""
        target = root / self.name
        suffix = ".zip" if self.source.endswith(".zip") else ".tar.gz"
        return target.with_name(target.name + suffix)


def cyclegan_set(name: str, description: str, counts: tuple[int, int, int, int] | None = None) -> Entry:
    """``counts``: the published trainA, trainB, testA, testB image counts, where verified (the
    layout check then expects them exactly); without them, each split needs at least one image."""
    splits = dict(zip(CYCLEGAN_SPLITS, counts)) if counts else CYCLEGAN_SPLITS
    return Entry(f"cyclegan/{name}", description, splits, url=CYCLEGAN_URL.format(name=name))


CATALOGUE: dict[str, Entry] = {
    entry.name: entry
    for entry in [
        Entry("maps", "Google Maps aerial photo | map, 600x600 halves", {"train": 1096, "val": 1098}),
        Entry("facades", "CMP Facades photo | label map, 256x256 halves", {"train": 400, "val": 100, "test": 106}),
        Entry("cityscapes", "Cityscapes photo | label map, 256x256 halves", {"train": 2975, "val": 500}),
        Entry("edges2shoes", "UT Zappos50K edges | shoe photo, 256x256 halves", {"train": 49825, "val": 200}),
        Entry("edges2handbags", "Amazon handbags edges | photo, 256x256 halves", {"train": 138567, "val": 200}),
        Entry("night2day", "webcam night | day, 256x256 halves", {"train": 17823, "val": None}),
        cyclegan_set("horse2zebra", "ImageNet wild horses | zebras", (1067, 1334, 120, 140)),
        cyclegan_set("apple2orange", "ImageNet apples | navel oranges"),
        cyclegan_set("summer2winter_yosemite", "Flickr Yosemite in summer | winter"),
        cyclegan_set("monet2photo", "Monet paintings | Flickr landscape photos"),
        cyclegan_set("cezanne2photo", "Cezanne paintings | Flickr landscape photos"),
        cyclegan_set("ukiyoe2photo", "Ukiyo-e prints | Flickr landscape photos"),
        cyclegan_set("vangogh2photo", "Van Gogh paintings | Flickr landscape photos"),
        cyclegan_set("maps", "Google Maps aerial photos | maps", (1096, 1096, 1098, 1098)),
        cyclegan_set("cityscapes", "Cityscapes street photos | label maps"),
        cyclegan_set("facades", "CMP Facades photos | label maps"),
        cyclegan_set("iphone2dslr_flower", "Flickr flower photos from iPhones | DSLRs"),
    ]
}


def lookup(name: str, catalogue: dict[str, Entry] = CATALOGUE) -> Entry:
    if name not in catalogue:
        close = difflib.get_close_matches(name, catalogue, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise DownloadError(f"unknown dataset {name!r}; {hint}the catalogue has {', '.join(catalogue)}")
    return catalogue[name]


def manual_steps(entry: Entry, root: Path) -> str:
    archive = entry.archive(root)
    return (
        f"To fetch it by hand: download {entry.source} (a browser, or "
        f"`curl -L -C - -o {archive} {entry.source}`), put it at {archive}, and run "
        f"`i2i data download {entry.name} --root {root}` again: it verifies and extracts that file."
    )


# -- 1. fetch ------------------------------------------------------------------
def fetch_file(
    url: str,
    dest: Path,
    label: str,
    manual: str,
    show_progress: bool = True,
    retries: int = 3,
    timeout: float = READ_TIMEOUT,
    max_bytes: int | None = None,
) -> None:
    """Stream ``url`` into ``dest.part`` (flushed as it grows), resuming after drops and stalls
    (``timeout`` seconds without a byte), then rename it to ``dest``. A file larger than
    ``max_bytes`` is refused, from its Content-Length before any byte is read where the server
    sends one. ``manual`` (how to fetch the file by hand) ends every error message."""
    part = dest.with_name(dest.name + ".part")
    progress = Progress(
        TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        disable=not show_progress,
    )
    last_error: Exception | None = None
    with progress:
        task = progress.add_task("download", total=None)
        if part.is_symlink():  # not a download of ours: never resumed from, nor written through
            part.unlink()
        for _ in range(retries):
            have = part.stat().st_size if part.exists() else 0
            try:
                if _fetch_once(url, part, have, timeout, max_bytes,
                               lambda n, total: progress.update(task, completed=n, total=total)):
                    os.replace(part, dest)
                    return
                last_error = ConnectionError("the connection closed before the end of the file")
            except HTTPError as error:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}. {manual}") from None
            except DownloadError:  # too large: what was fetched is of no use
                part.unlink(missing_ok=True)
                raise
            except TimeoutError:
                last_error = TimeoutError(f"no byte for {timeout:g} s")
            except (URLError, OSError, http.client.HTTPException) as error:
                last_error = error
            except KeyboardInterrupt:
                raise DownloadInterrupted(f"download of {url} interrupted.{_kept(part)}") from None
    raise DownloadError(f"cannot download {url}: {getattr(last_error, 'reason', last_error)}.{_kept(part)} {manual}")


def _kept(part: Path) -> str:
    return f" {part} keeps the {part.stat().st_size} bytes fetched so far; running again resumes there." if part.exists() else ""


def _fetch_once(url: str, part: Path, have: int, timeout: float, max_bytes: int | None, report) -> bool:
    """One request; True when ``part`` holds the whole file."""
    request = Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as error:
        if error.code == 416 and have:  # nothing after what we have: the .part is already whole
            return True
        raise
    with response:
        if response.status == 206 and _range_start(response) != have:
            part.unlink()  # a range we did not ask for: start over on the next attempt
            return False
        resumed = response.status == 206
        start = have if resumed else 0  # a server that ignores Range sends everything again
        length = response.headers.get("Content-Length", "")
        total = start + int(length) if length.isdigit() else None
        _check_size(url, total, max_bytes)
        done = start
        # Never through a link planted at the .part name: appending would write into the file it points to.
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if resumed else os.O_TRUNC)
        with os.fdopen(os.open(part, flags, 0o666), "wb") as out:
            while chunk := response.read1(CHUNK):  # what has arrived, not a full chunk: a slow server shows progress
                out.write(chunk)
                out.flush()
                done += len(chunk)
                _check_size(url, done, max_bytes)
                report(done, total)
    # urllib returns a short body without an error when the connection drops.
    return total is None or done >= total


def _check_size(url: str, size: int | None, max_bytes: int | None) -> None:
    if size is not None and max_bytes is not None and size > max_bytes:
        raise DownloadError(f"{url} is over {size:,} bytes, more than the {max_bytes:,} this file can be; "
                            f"refusing to download it (is the URL right?)")


def _range_start(response) -> int | None:
    content_range = response.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


# -- 2. checksum -----------------------------------------------------------------
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- 3./4. extraction --------------------------------------------------------------
def path_problem(name: str) -> str | None:
    """Why extracting a member named ``name`` could write outside the target, if it could."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\"):
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' path"
    return None


def refuse(archive: Path, name: str, problem: str) -> NoReturn:
    raise DownloadError(f"{archive}: refusing to extract: member {name!r} is {problem}; nothing was extracted")


def checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every member, after refusing the archive if any could write outside the target."""
    members = tar.getmembers()
    for member in members:
        problem = path_problem(member.name)
        if problem is None and (member.issym() or member.islnk()):
            problem = f"a link (to {member.linkname!r})"
        elif problem is None and not (member.isfile() or member.isdir()):
            problem = "a device, FIFO or other special file"
        if problem:
            refuse(archive, member.name, problem)
    return members


def checked_zip_members(archive_file: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    """As ``checked_members``, for a zip: a member's Unix mode says whether it is a link or a device."""
    members = archive_file.infolist()
    for member in members:
        kind = stat.S_IFMT(member.external_attr >> 16)
        problem = path_problem(member.filename)
        if problem is None and kind == stat.S_IFLNK:
            problem = "a link"
        elif problem is None and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            problem = "a device, FIFO or other special file"
        if problem:
            refuse(archive, member.filename, problem)
    return members


def refuse_expanding(archive: Path, expanded: int) -> None:
    """A bomb is refused from the sizes its headers state (a zip member inflates to no more than
    its stated size, a tar member holds exactly its size), before anything is extracted."""
    size = archive.stat().st_size
    if expanded > max(MAX_EXPANSION * size, EXPANSION_FLOOR):
        raise DownloadError(
            f"{archive}: refusing to extract: its members would expand from {size:,} to {expanded:,} bytes, over "
            f"{MAX_EXPANSION} times the archive (image sets barely compress); nothing was extracted. Delete it and "
            f"download again"
        )


def unpack(archive: Path, staging: Path) -> None:
    """Every member of the .tar.gz or .zip ``archive`` into ``staging``, once all are checked."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as archive_file:
            members = checked_zip_members(archive_file, archive)
            refuse_expanding(archive, sum(member.file_size for member in members))
            staging.mkdir(parents=True)
            archive_file.extractall(staging, members=members)
        return
    with tarfile.open(archive, "r:gz") as tar:
        members = checked_members(tar, archive)
        refuse_expanding(archive, sum(member.size for member in members))
        staging.mkdir(parents=True)
        tar.extractall(staging, members=members, filter="data")


def extract(archive: Path, root: Path, entry: Entry) -> Path:
    """Extract ``archive`` (holding ``FOLDER/...``, the last part of the entry's name) into
    ``root/NAME`` via a staging folder, checking the layout and image counts there, before
    anything is renamed into place."""
    target = root / entry.name
    name = target.name
    staging = target.with_name(f".{name}.extracting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        unpack(archive, staging)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as error:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{archive} is corrupt ({error}); it was deleted, run the download again") from None
    extracted = staging / name
    if not extracted.is_dir():
        found = ", ".join(sorted(p.name for p in staging.iterdir())) or "nothing"
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{archive}: expected a top-level folder {name}/, found {found}")
    problems = layout_problems(extracted, entry)
    if problems:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(
            f"{archive} is not a complete {entry.name} set: {'; '.join(problems)}. Nothing was extracted to "
            f"{target}; delete {archive} to download it again"
        )
    os.replace(extracted, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def layout_problems(folder: Path, entry: Entry) -> list[str]:
    """What is missing from ``folder`` or counts wrong, split by split (paths relative to it)."""
    problems = []
    for split, expected in entry.splits.items():
        split_dir = folder / split
        if not split_dir.is_dir():
            problems.append(f"{split}/ is missing")
            continue
        count = sum(1 for p in split_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if (expected is None and count == 0) or (expected is not None and count != expected):
            problems.append(f"{split}/ holds {count} images, expected {expected or 'at least one'}")
    return problems


# -- the whole -------------------------------------------------------------------
def download_dataset(
    name: str, root: Path, catalogue: dict[str, Entry] = CATALOGUE, show_progress: bool = True, retries: int = 3
) -> Path:
    entry = lookup(name, catalogue)
    target = root / name
    if target.exists():
        problems = layout_problems(target, entry)
        if problems:
            raise DownloadError(
                f"{target} does not look like a complete {name} set: {'; '.join(problems)}. "
                f"Delete {target} and download again."
            )
        return target
    archive = entry.archive(root)
    archive.parent.mkdir(parents=True, exist_ok=True)
    if not archive.exists():
        fetch_file(entry.source, archive, name, manual_steps(entry, root), show_progress, retries)
    if entry.sha256 is not None:
        actual = sha256_of(archive)
        if actual != entry.sha256:
            archive.unlink()
            raise DownloadError(
                f"{archive}: sha256 {actual} does not match the catalogue's {entry.sha256}; "
                f"the file was deleted, run the download again"
            )
    extract(archive, root, entry)
    archive.unlink()
    return target


def ensure_data(data: DataSection, show_progress: bool = True) -> None:
    """``data.download: true``: fetch a missing ``data.root`` named after a catalogue set
    (``data/maps``: maps; ``data/cyclegan/maps``: cyclegan/maps)."""
    if not data.download or data.root.exists():
        return
    parts = data.root.parts
    named = [name for name in CATALOGUE if parts[-len(Path(name).parts):] == Path(name).parts]
    if not named:
        cyclegan = f"cyclegan/{data.root.name}"
        hint = f" (the CycleGAN set {cyclegan} goes to {data.root.parent / cyclegan})" if cyclegan in CATALOGUE else ""
        raise DownloadError(
            f"data.root {data.root} is missing and data.download is set, but {data.root.name!r} (the last part of "
            f"data.root) is not a downloadable set{hint}: {', '.join(CATALOGUE)}"
        )
    name = max(named, key=lambda n: len(Path(n).parts))  # data/cyclegan/maps is cyclegan/maps, not maps
    root = data.root
    for _ in Path(name).parts:
        root = root.parent
    download_dataset(name, root, show_progress=show_progress)
