"""Fetching the pix2pix reference datasets: resumable, verified, safely extracted.

``download_dataset("maps", root)`` leaves ``root/maps/{train,val}`` or raises a
``DownloadError`` that says what to do. The steps, each safe to interrupt:

1. stream ``NAME.tar.gz`` into ``NAME.tar.gz.part``, resuming with an HTTP Range
   request from what an earlier attempt left, then rename it (atomic);
2. check its sha256 when the catalogue has one;
3. check every archive member before extracting any: absolute paths, ``..``,
   links and device files are refused;
4. extract into a hidden staging folder, check the layout and image counts,
   then rename the folder into place.

An archive already in ``root`` (fetched by hand) is used as it is. Step 1 is
``fetch_file``, which the model catalogue uses for its downloads too.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from i2i.data.base import IMAGE_SUFFIXES, DataError
from i2i.recipe import DataSection

REFERENCE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
CHUNK = 1 << 20


class DownloadError(DataError):
    pass


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


CATALOGUE: dict[str, Entry] = {
    entry.name: entry
    for entry in [
        Entry("maps", "Google Maps aerial photo | map, 600x600 halves", {"train": 1096, "val": 1098}),
        Entry("facades", "CMP Facades photo | label map, 256x256 halves", {"train": 400, "val": 100, "test": 106}),
        Entry("cityscapes", "Cityscapes photo | label map, 256x256 halves", {"train": 2975, "val": 500}),
        Entry("edges2shoes", "UT Zappos50K edges | shoe photo, 256x256 halves", {"train": 49825, "val": 200}),
        Entry("edges2handbags", "Amazon handbags edges | photo, 256x256 halves", {"train": 138567, "val": 200}),
        Entry("night2day", "webcam night | day, 256x256 halves", {"train": 17823, "val": None}),
    ]
}


def lookup(name: str, catalogue: dict[str, Entry] = CATALOGUE) -> Entry:
    if name not in catalogue:
        raise DownloadError(f"unknown dataset {name!r}; the catalogue has {', '.join(catalogue)}")
    return catalogue[name]


def manual_steps(entry: Entry, root: Path) -> str:
    archive = root / f"{entry.name}.tar.gz"
    return (
        f"To fetch it by hand: download {entry.source} (a browser, or "
        f"`curl -L -C - -o {archive} {entry.source}`), put it at {archive}, and run "
        f"`i2i data download {entry.name} --root {root}` again: it verifies and extracts that file."
    )


# -- 1. fetch ------------------------------------------------------------------
def fetch_file(
    url: str, dest: Path, label: str, manual: str, show_progress: bool = True, retries: int = 3, timeout: float = 30.0
) -> None:
    """Stream ``url`` into ``dest.part``, resuming after drops, then rename it to ``dest``.
    ``manual`` (how to fetch the file by hand) ends every error message."""
    part = dest.with_name(dest.name + ".part")
    progress = Progress(
        TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        disable=not show_progress,
    )
    last_error: Exception | None = None
    with progress:
        task = progress.add_task("download", total=None)
        for _ in range(retries):
            have = part.stat().st_size if part.exists() else 0
            try:
                if _fetch_once(url, part, have, timeout, lambda n, total: progress.update(task, completed=n, total=total)):
                    os.replace(part, dest)
                    return
                last_error = ConnectionError("the connection closed before the end of the file")
            except HTTPError as error:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}. {manual}") from None
            except (URLError, OSError, http.client.HTTPException) as error:
                last_error = error
    kept = f" {part} keeps the {part.stat().st_size} bytes fetched so far; running again resumes there." if part.exists() else ""
    raise DownloadError(f"cannot download {url}: {getattr(last_error, 'reason', last_error)}.{kept} {manual}")


def _fetch_once(url: str, part: Path, have: int, timeout: float, report) -> bool:
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
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        done = start
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                report(done, total)
    # urllib returns a short body without an error when the connection drops.
    return total is None or done >= total


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
def checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every member, after refusing the archive if any could write outside the target."""
    members = tar.getmembers()
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or member.name.startswith("\\"):
            problem = "an absolute path"
        elif ".." in path.parts:
            problem = "a '..' path"
        elif member.issym() or member.islnk():
            problem = f"a link (to {member.linkname!r})"
        elif not (member.isfile() or member.isdir()):
            problem = "a device, FIFO or other special file"
        else:
            continue
        raise DownloadError(f"{archive}: refusing to extract: member {member.name!r} is {problem}; nothing was extracted")
    return members


def extract(archive: Path, root: Path, entry: Entry) -> Path:
    """Extract ``archive`` (holding ``NAME/...``) into ``root/NAME`` via a staging folder, checking
    the layout and image counts there, before anything is renamed into place."""
    name = entry.name
    staging = root / f".{name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = checked_members(tar, archive)
            staging.mkdir(parents=True)
            tar.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
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
            f"{archive} is not a complete {name} set: {'; '.join(problems)}. Nothing was extracted to "
            f"{root / name}; delete {archive} to download it again"
        )
    target = root / name
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
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{name}.tar.gz"
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
    """``data.download: true``: fetch a missing ``data.root`` named after a catalogue set."""
    if not data.download or data.root.exists():
        return
    name = data.root.name
    if name not in CATALOGUE:
        raise DownloadError(
            f"data.root {data.root} is missing and data.download is set, but {name!r} (the last part of "
            f"data.root) is not a downloadable set: {', '.join(CATALOGUE)}"
        )
    download_dataset(name, data.root.parent, show_progress=show_progress)
