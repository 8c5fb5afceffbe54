"""A run directory's guards: one run at a time, never reused silently, never a dangerous path.

``claim_run_dir`` is what ``i2i run`` holds for the life of a run:

- the path is refused when it is a file system root, the home directory itself, an
  existing file, under an existing file, or on a virtual file system (/proc, /sys);
- an exclusive advisory lock (``fcntl.flock``) on ``<run dir>/.i2i-run.lock``, which
  holds the owner's pid, host and start time. The OS drops the lock when the process
  ends, however it ends; a lock file left by a killed run is taken over with a note;
- a directory that already holds a run (``checkpoints/``, ``log.jsonl`` or
  ``recipe.yaml``) is only reused with ``resume``, or its run's own files (``RUN_OUTPUTS``) are
  moved aside to ``<run dir>.old-<timestamp>/`` with ``overwrite`` (nothing is deleted, and
  nothing else is moved).

On resume, ``recipe_changes`` lists what differs from the run's ``recipe.yaml``;
anything beyond the schedule and cadence (``FREE_TO_CHANGE``) needs ``allow_changes``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from i2i.engine.checkpoint import MANIFEST
from i2i.engine.run_log import LOG
from i2i.errors import I2IError
from i2i.recipe import Recipe, RecipeError
from i2i.safe_files import VIRTUAL_FILE_SYSTEMS

LOCK_NAME = ".i2i-run.lock"
# What an i2i run writes first (recipe.yaml), and what makes it worth keeping.
RUN_MARKERS = ("checkpoints", "log.jsonl", "recipe.yaml")
# Everything an i2i run writes into its directory besides its lock: all that --overwrite moves aside,
# so a folder that also holds the user's data or recipes keeps them where they are.
RUN_OUTPUTS = ("checkpoints", "best", "samples", "plots", "tensorboard", "log.jsonl", "report.html", "recipe.yaml",
               "environment.json")
RUN_FOLDERS = ("checkpoints", "best", "samples", "plots", "tensorboard")  # what a run writes and deletes files in
# Recipe keys a resumed run may change without --allow-changes: how long to train and how
# often to log, sample, save and evaluate, never what is trained or how.
FREE_TO_CHANGE = (
    "train.epochs", "train.epochs_decay", "train.max_steps", "train.time_budget", "train.budget_schedule",
    "train.log_every", "train.sample_every", "train.checkpoint_every", "train.checkpoint_each_epoch", "train.keep_checkpoints",
    "train.eval_every", "train.eval_images", "train.tensorboard",
    "data.num_workers", "description", "output_dir",
    # how the engine computes the same math (runs from before train.engine stored them explicitly)
    "train.engine_probe", "train.channels_last", "train.fused_adam", "train.cpu_speedups", "train.cuda_graph",
    "train.compile", "train.compile_mode",
)


class RunDirError(I2IError):
    pass


def check_run_dir_path(path: Path) -> Path:
    """``path`` made absolute, or a RunDirError when a run must not be written there."""
    resolved = Path(path).expanduser().resolve()
    advice = "choose another --out (or output_dir)"
    if resolved == Path(resolved.anchor):
        raise RunDirError(f"run directory {path} is the file system root; {advice}")
    if resolved == Path.home().resolve():
        raise RunDirError(f"run directory {path} is your home directory itself; {advice}, e.g. {path}/runs/<name>")
    for virtual in VIRTUAL_FILE_SYSTEMS:
        if resolved.is_relative_to(virtual):
            raise RunDirError(f"run directory {path} is on the virtual file system {virtual}; {advice}")
    if resolved.exists() and not resolved.is_dir():
        raise RunDirError(f"run directory {path} is an existing file, not a folder; {advice}")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"run directory {path} cannot be made: {parent} is a file; {advice}")
            break
    return resolved


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / marker).exists() for marker in RUN_MARKERS)


def enclosing_run(path: Path) -> str | None:
    """``"run directory X"`` or ``"checkpoint folder X"`` when ``path`` is or lies in one (links
    resolved), for commands that must never write over a run; None elsewhere. A folder counts as a
    run when it has ``checkpoints/`` or ``log.jsonl`` (a recipe.yaml alone may be the user's own)."""
    resolved = Path(path).resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / MANIFEST).is_file():
            return f"checkpoint folder {folder}"
        if (folder / "checkpoints").is_dir() or (folder / LOG).is_file():
            return f"run directory {folder}"
    return None


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.i2i-run.lock`` while a run lives; ``note`` hears
    about a stale lock taken over."""

    def __init__(self, run_dir: Path, note: Callable[[str], None] = print):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.note = note
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:  # never through a link: the holder's record is written into the file opened
                # O_NONBLOCK: opening a FIFO planted there returns at once (and is refused below)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as error:
                reason = "it is a symbolic link" if error.errno == errno.ELOOP else error.strerror
                raise RunDirError(f"cannot open the lock {self.path}: {reason}; remove it, or choose another --out") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise RunDirError(f"cannot use the lock {self.path}: it is not a regular file (a FIFO, a device or a "
                                  f"folder); remove it, or choose another --out")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _wait_for_holder(fd)
                os.close(fd)
                raise RunDirError(
                    f"run directory {self.run_dir} is in use by another i2i run ({_describe(holder)}); "
                    f"wait for it to end, or choose another --out"
                ) from None
            except OSError as error:  # a file system without locks: run unprotected, but say so
                os.close(fd)
                self.note(f"note: cannot lock {self.path} ({error.strerror}); nothing stops a second run in {self.run_dir}")
                return
            # A releasing run unlinks the file before unlocking: if it did so between our open and
            # flock, we locked a file nobody else will see, so try again on the current one.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        stale = _read_holder(fd)
        if stale:
            self.note(f"note: taking over the lock of {self.run_dir} left by an i2i run that ended without "
                      f"releasing it ({_describe(stale)})")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            self.path.unlink()  # while still locked, so nobody locks a file about to vanish
        os.close(self.fd)  # drops the lock
        self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _wait_for_holder(fd: int, seconds: float = 1.0) -> dict[str, Any] | None:
    """The holder's record; it writes it just after locking, so give it a moment."""
    deadline = time.monotonic() + seconds
    while (holder := _read_holder(fd)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "pid unknown: it is just starting"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def move_aside(run_dir: Path) -> Path:
    """Move what the old run wrote (``RUN_OUTPUTS``) into a new ``<run_dir>.old-<timestamp>`` folder;
    anything else stays. The folder itself stays, so the lock held in it keeps guarding it."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    for number in range(2, 1000):
        if not aside.exists():
            break
        aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{number}")
    aside.mkdir()
    for name in RUN_OUTPUTS:
        if os.path.lexists(run_dir / name):
            os.replace(run_dir / name, aside / name)
    return aside


@contextlib.contextmanager
def claim_run_dir(
    run_dir: Path, resume: bool = False, overwrite: bool = False, note: Callable[[str], None] = print
) -> Iterator[Path]:
    """Check the path, lock the directory and refuse to reuse a run silently; yields the absolute path."""
    if resume and overwrite:
        raise RunDirError("--resume continues the run in the directory and --overwrite moves it aside: choose one")
    resolved = check_run_dir_path(run_dir)
    made = [folder for folder in (resolved, *resolved.parents) if not folder.exists()]  # deepest first
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot make run directory {run_dir}: {error.strerror}; choose another --out") from None
    try:
        with RunLock(resolved, note):
            if holds_run(resolved) and not resume:
                if not overwrite:
                    raise RunDirError(
                        f"{run_dir} already holds a run; continue it with --resume, choose another --out, "
                        f"or pass --overwrite to move the old run aside"
                    )
                aside = move_aside(resolved)
                note(f"moved the previous run in {run_dir} aside to {aside}; delete that folder when you no longer need it")
            refuse_planted_links(resolved, run_dir)
            yield resolved
    finally:
        # A run that failed before writing anything (its first data download, say) leaves no empty
        # runs/<name> behind; rmdir removes only empty folders, so nothing written is ever lost.
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break


def refuse_planted_links(resolved: Path, run_dir: Path) -> None:
    """A run writes and deletes files in its folders (``RUN_FOLDERS``): one that is a link would
    lead those writes elsewhere, over the files there."""
    for name in RUN_FOLDERS:
        if (resolved / name).is_symlink():
            raise RunDirError(f"{run_dir / name} is a symbolic link; a run writes and deletes files only inside its "
                              f"run directory and never through a link: remove it, or choose another --out")


# ------------------------------------------------------------------ resuming
def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``; list items by index (``losses.1.weight``)."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    if not flat and prefix:
        flat[prefix] = data  # an empty dict or list is a value of its own
    return flat


class Unset:
    """A key one of two recipes does not have (an older i2i wrote it, say)."""

    def __repr__(self) -> str:
        return "(unset)"


UNSET = Unset()


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for each value that differs; a missing side is ``UNSET``."""
    before, after = flatten(old), flatten(new)
    return [(key, before.get(key, UNSET), after.get(key, UNSET)) for key in sorted(before.keys() | after.keys())
            if before.get(key, UNSET) != after.get(key, UNSET)]


def _is_free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in FREE_TO_CHANGE)


def check_resume_changes(
    run_dir: Path, recipe: dict[str, Any], allow_changes: bool = False, note: Callable[[str], None] = print
) -> list[tuple[str, Any, Any]]:
    """Compare a resumed run's recipe (a ``model_dump(mode="json")``) with the run's ``recipe.yaml``:
    every change is reported through ``note``; changes beyond ``FREE_TO_CHANGE`` need ``allow_changes``."""
    saved = Path(run_dir) / "recipe.yaml"
    if not saved.is_file():
        return []
    try:
        old = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RunDirError(f"cannot read {saved} to compare the resumed recipe with it: {error}") from None
    if not isinstance(old, dict):
        raise RunDirError(f"{saved} is not a recipe; cannot compare the resumed recipe with it")
    try:  # keys an older i2i did not write take today's defaults, which are no change
        old, recipe = (Recipe.from_dict(r, str(saved)).model_dump(mode="json") for r in (old, recipe))
    except RecipeError:
        pass  # a recipe today's i2i refuses is compared as written
    changes = recipe_changes(old, recipe)
    if not changes:
        return []
    shown = ", ".join(f"{key} {old_value!r} -> {new_value!r}" for key, old_value, new_value in changes)
    restricted = [key for key, _, _ in changes if not _is_free(key)]
    if restricted and not allow_changes:
        raise RunDirError(
            f"the recipe differs from the one {run_dir} was trained with: {shown}. Only the schedule and the "
            f"logging, sample, checkpoint and evaluation cadence may change on resume; pass --allow-changes to "
            f"resume with {', '.join(restricted)} changed, or start a new run with another --out"
        )
    note(f"resuming with a changed recipe: {shown}")
    return changes
