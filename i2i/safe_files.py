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
from pathlib import Path
from typing import IO, Iterator

# A disk out of space or a user out of quota: the same advice.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    reason = "it is a symbolic link, and i2i does not write through links" if error.errno == errno.ELOOP else error.strerror
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
