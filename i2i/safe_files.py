"""Writing files whole or not at all, and never through a link someone planted.

A file is written under a fresh temporary name beside its target, created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (so nothing already there, link or file, is ever
opened), then renamed over the target. A rename replaces a link at the target
itself, never the file it points to. Appending opens with ``O_NOFOLLOW``.

A failing write raises ``WriteError`` (an ``OSError``) naming the target, so that a
full disk can be reported in one line with the file it was writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import IO, Iterator

# A disk out of space or a user out of quota: the same advice.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
LINK_REASON = "it is a symbolic link, and i2i does not write through links"
VIRTUAL_FILE_SYSTEMS = (Path("/proc"), Path("/sys"))  # their files take no data, whatever their modes say


class WriteError(OSError):
    """Writing ``filename`` failed; ``errno`` and ``strerror`` say why."""


def is_disk_full(error: OSError) -> bool:
    return error.errno in DISK_FULL


def failed_to_write(error: OSError) -> bool:
    """An error of one of the writers here, or a full disk wherever it came from."""
    return isinstance(error, WriteError) or (is_disk_full(error) and error.filename is not None)


def describe_write_failure(error: OSError) -> str:
    """``disk full: no space left to write X`` or ``cannot write X: reason``, for a one-line error."""
    if is_disk_full(error):
        return f"disk full: no space left to write {error.filename}"
    return f"cannot write {error.filename}: {error.strerror or error}"


def _write_error(error: OSError, target: Path) -> WriteError:
    reason = LINK_REASON if error.errno == errno.ELOOP else error.strerror
    return WriteError(error.errno, reason or str(error), str(target))


def _create_new(folder: Path, name: str) -> tuple[int, Path]:
    """A new file in ``folder`` under a random hidden name derived from ``name``."""
    while True:
        temporary = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), temporary
        except FileExistsError:
            continue


@contextlib.contextmanager
def replacing(target: Path, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """A handle on a new temporary file that becomes ``target`` when the block ends without error.
    ``durable``: flushed to the disk (fsync) before the rename, for files a crash must not lose."""
    target = Path(target)
    try:
        fd, temporary = _create_new(target.parent, target.name)
    except OSError as error:
        raise _write_error(error, target) from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise _write_error(error, target) from None
        raise


def write_file(target: Path, data: bytes | str, durable: bool = False) -> None:
    """``target`` holds ``data`` (text as UTF-8) afterwards, or is left as it was."""
    with replacing(target, "w" if isinstance(data, str) else "wb", durable) as handle:
        handle.write(data)


def append_text(target: Path, text: str) -> None:
    """Append to ``target`` (created if missing), refusing to follow a link there."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise _write_error(error, target) from None


def remove_tree(path: Path) -> None:
    """Remove a folder left by an earlier write; a link found there is removed itself, never followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def cache_root() -> Path:
    """Where i2i keeps its caches (the engine's choices, the Inception weights, converted models):
    ``$I2I_CACHE``, else ~/.cache/i2i. An empty I2I_CACHE counts as unset, not as the current folder."""
    return Path(os.environ.get("I2I_CACHE") or Path.home() / ".cache" / "i2i").expanduser()


def own_folder(path: Path) -> Path:
    """``path``, a folder made where missing, refused when it is a link: what i2i writes or
    deletes in a folder of its own (a run directory's ``samples/``, ``plots/``, ``checkpoints/``)
    stays inside it, as a link planted there would lead elsewhere."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(error, path) from None
    if path.is_symlink():
        raise WriteError(errno.ELOOP, LINK_REASON, str(path))
    return path


def check_writable(target: Path) -> None:
    """A WriteError now where ``target`` could not be written or appended to later (a link, a
    folder or other special file, a file on /proc or /sys, a folder that takes no new files):
    for a command whose long work would otherwise be lost at its end. Nothing is left behind."""
    target = Path(target)
    virtual = next((folder for folder in VIRTUAL_FILE_SYSTEMS if target.resolve().is_relative_to(folder)), None)
    if virtual is not None:
        raise WriteError(errno.EACCES, f"it is on the virtual file system {virtual}, which keeps no files", str(target))
    try:
        found = target.lstat()
    except FileNotFoundError:
        found = None
    except OSError as error:
        raise _write_error(error, target) from None
    if found is not None:
        if stat.S_ISLNK(found.st_mode):
            raise WriteError(errno.ELOOP, LINK_REASON, str(target))
        if not stat.S_ISREG(found.st_mode):
            folder = stat.S_ISDIR(found.st_mode)
            raise WriteError(errno.EISDIR if folder else errno.EINVAL,
                             "it is a folder" if folder else "it is not a regular file", str(target))
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW))
        except OSError as error:
            raise _write_error(error, target) from None
        return
    folder = next(parent for parent in target.absolute().parents if parent.exists())  # its folder, or the nearest above
    if not folder.is_dir():
        raise WriteError(errno.ENOTDIR, f"{folder} is a file", str(target))
    try:
        fd, temporary = _create_new(folder, target.name)
    except OSError as error:
        raise _write_error(error, target) from None
    os.close(fd)
    temporary.unlink()
