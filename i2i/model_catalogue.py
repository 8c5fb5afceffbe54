"""The published generators of the pix2pix and CycleGAN reference implementation, by name.

The five pix2pix U-Nets keep their published names (``map2sat``); the 18 CycleGAN
ResNet generators are ``cyclegan/NAME`` (``cyclegan/horse2zebra``, ``cyclegan/map2sat``),
since three of their names are pix2pix names too. CUT's authors publish six anti-aliased
ResNet generators (CUT and FastCUT for horse2zebra, cat2dog and cityscapes) in one archive,
``pretrained_models.tar``, each as ``checkpoints/<set>_<cut|fastcut>_pretrained/latest_net_G.pth``;
they are ``cut/<set>_<cut|fastcut>`` (``cut/horse2zebra_cut``). The archive is fetched once into
``~/.cache/i2i/models/cut/`` (under its own lock) and kept for the other five; each model's
``.pth`` is taken out of it into the model's folder and handled as a published ``.pth`` from there.

``ensure_model("map2sat")`` returns a checkpoint folder that ``i2i translate
--checkpoint`` and ``i2i.load`` read, downloading and converting on first use:

    ~/.cache/i2i/models/map2sat/        (I2I_CACHE replaces ~/.cache/i2i)
        map2sat.pth                     the file as published (resumed from map2sat.pth.part)
        source.json                     its sha256, recorded at the first download
        generator.safetensors           converted, the recipe in its metadata
        manifest.json                   sha256 of generator.safetensors, written last
        .lock                           held while a process fetches or converts

The publisher gives no checksums, so the first download is trusted (when it
converts; one that does not is deleted) and every later read is held to it: the
``.pth`` against ``source.json`` whenever it is converted, the converted weights
against the manifest every time the model is asked for.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import sys
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from i2i.data.download import fetch_file, sha256_of
from i2i.engine.checkpoint import MANIFEST, CheckpointError, verify_checkpoint
from i2i.errors import I2IError
from i2i.safe_files import cache_root, write_file
from i2i.recipe import Recipe
from i2i.reference_weights import import_reference_weights

MODELS_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch"
URL_ENV = "I2I_MODELS_URL"  # another base URL: a mirror, or a test's server
CYCLEGAN_MODELS_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models"
CYCLEGAN = "cyclegan/"  # the CycleGAN generators' names start with it
# The published CycleGAN generators are all resnet_9blocks, instance norm, no dropout: this recipe's generator.
CYCLEGAN_RECIPE = "cyclegan_horse2zebra"
CUT_MODELS_URL = "http://efrosgans.eecs.berkeley.edu/CUT"
CUT = "cut/"  # the CUT and FastCUT generators' names start with it
CUT_ARCHIVE = "pretrained_models.tar"
CACHE_ENV = "I2I_CACHE"
SOURCE_RECORD = "source.json"
LOCK_FILE = ".lock"
MAX_SOURCE_BYTES = 1 << 30  # the published generators are 218 MB (the U-Net 256 in fp32)


class ModelError(I2IError):
    pass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    recipe: str  # a shipped recipe's name (or a recipe YAML path) with the same generator
    direction: Literal["AtoB", "BtoA"]  # which side of that recipe's data is the input
    data_root: str | None = None  # the set it was trained on, where it is not the recipe's

    @property
    def file(self) -> str:
        """The published file's name, without ``.pth`` (for CUT's: the name it is kept under here)."""
        return self.name.removeprefix(CYCLEGAN).removeprefix(CUT)

    @property
    def family(self) -> str:
        return "CycleGAN" if self.name.startswith(CYCLEGAN) else "CUT" if self.name.startswith(CUT) else "pix2pix"


def cyclegan(name: str, task: str, dataset: str, direction: Literal["AtoB", "BtoA"]) -> ModelEntry:
    return ModelEntry(CYCLEGAN + name, task, CYCLEGAN_RECIPE, direction, f"data/cyclegan/{dataset}")


def cut(dataset: str, mode: Literal["cut", "fastcut"], task: str, data_root: str,
        direction: Literal["AtoB", "BtoA"]) -> ModelEntry:
    # Both modes train the same generator; the recipe of each mode says how it was trained.
    recipe = "cut_horse2zebra" if mode == "cut" else "fastcut_horse2zebra"
    return ModelEntry(f"{CUT}{dataset}_{mode}", task, recipe, direction, data_root)


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry("edges2shoes", "edges -> shoe photo", "edges2shoes", "AtoB"),
        ModelEntry("sat2map", "aerial photo -> map", "maps_aerial2map", "AtoB"),
        ModelEntry("map2sat", "map -> aerial photo", "pix2pix_maps", "BtoA"),
        ModelEntry("facades_label2photo", "facade labels -> photo", "facades_labels2photo", "BtoA"),
        ModelEntry("day2night", "day -> night (webcams)", "night2day", "BtoA"),
        cyclegan("apple2orange", "apple -> orange", "apple2orange", "AtoB"),
        cyclegan("orange2apple", "orange -> apple", "apple2orange", "BtoA"),
        cyclegan("summer2winter_yosemite", "summer -> winter (Yosemite)", "summer2winter_yosemite", "AtoB"),
        cyclegan("winter2summer_yosemite", "winter -> summer (Yosemite)", "summer2winter_yosemite", "BtoA"),
        cyclegan("horse2zebra", "horse -> zebra", "horse2zebra", "AtoB"),
        cyclegan("zebra2horse", "zebra -> horse", "horse2zebra", "BtoA"),
        cyclegan("monet2photo", "Monet painting -> photo", "monet2photo", "AtoB"),
        cyclegan("style_monet", "photo -> Monet painting", "monet2photo", "BtoA"),
        cyclegan("style_cezanne", "photo -> Cezanne painting", "cezanne2photo", "BtoA"),
        cyclegan("style_ukiyoe", "photo -> Ukiyo-e print", "ukiyoe2photo", "BtoA"),
        cyclegan("style_vangogh", "photo -> Van Gogh painting", "vangogh2photo", "BtoA"),
        cyclegan("sat2map", "aerial photo -> map", "maps", "AtoB"),
        cyclegan("map2sat", "map -> aerial photo", "maps", "BtoA"),
        cyclegan("cityscapes_photo2label", "street photo -> label map", "cityscapes", "AtoB"),
        cyclegan("cityscapes_label2photo", "label map -> street photo", "cityscapes", "BtoA"),
        cyclegan("facades_photo2label", "facade photo -> labels", "facades", "AtoB"),
        cyclegan("facades_label2photo", "facade labels -> photo", "facades", "BtoA"),
        cyclegan("iphone2dslr_flower", "iPhone -> DSLR flower photo", "iphone2dslr_flower", "AtoB"),
        # The authors' experiments/pretrained_launcher.py: cityscapes runs BtoA (labels -> photo).
        cut("horse2zebra", "cut", "horse -> zebra (CUT)", "data/cyclegan/horse2zebra", "AtoB"),
        cut("horse2zebra", "fastcut", "horse -> zebra (FastCUT)", "data/cyclegan/horse2zebra", "AtoB"),
        cut("cat2dog", "cut", "cat -> dog, AFHQ (CUT)", "data/cat2dog", "AtoB"),
        cut("cat2dog", "fastcut", "cat -> dog, AFHQ (FastCUT)", "data/cat2dog", "AtoB"),
        cut("cityscapes", "cut", "label map -> street photo (CUT)", "data/cyclegan/cityscapes", "BtoA"),
        cut("cityscapes", "fastcut", "label map -> street photo (FastCUT)", "data/cyclegan/cityscapes", "BtoA"),
    ]
}


def is_model_name(name: str) -> bool:
    return name in MODELS


def lookup(name: str) -> ModelEntry:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ModelError(f"unknown model {name!r}; {hint}the catalogue has {', '.join(MODELS)} (i2i models list)")
    return MODELS[name]


def default_cache() -> Path:
    return cache_root() / "models"


def models_url(cyclegan: bool = False, cut: bool = False) -> str:
    """Where the published pix2pix (or CycleGAN, or CUT) generators are downloaded from. A mirror
    (``I2I_MODELS_URL``) keeps the catalogue's names: ``MIRROR/map2sat.pth``, ``MIRROR/cyclegan/map2sat.pth``,
    ``MIRROR/cut/pretrained_models.tar``."""
    mirror = os.environ.get(URL_ENV, "").rstrip("/")
    if mirror:
        return f"{mirror}/{CYCLEGAN.rstrip('/')}" if cyclegan else f"{mirror}/{CUT.rstrip('/')}" if cut else mirror
    return CYCLEGAN_MODELS_URL if cyclegan else CUT_MODELS_URL if cut else MODELS_URL


def source_url(entry: ModelEntry) -> str:
    if entry.family == "CUT":
        return f"{models_url(cut=True)}/{CUT_ARCHIVE}"
    return f"{models_url(entry.family == 'CycleGAN')}/{entry.file}.pth"


def model_recipe(entry: ModelEntry) -> Recipe:
    """The recipe that travels with the converted weights: the matching recipe, with the
    model's direction and a description saying what it is."""
    recipe = Recipe.from_file(entry.recipe)
    description = f"the {entry.family} reference's published {entry.file} generator: {entry.task} ({entry.direction})"
    changes = {"data.direction": entry.direction, "description": description}
    return recipe.variant(**changes, **({"data.root": entry.data_root} if entry.data_root else {}))


def is_cached(name: str, cache: Path | None = None) -> bool:
    return ((cache or default_cache()) / name / MANIFEST).is_file()


def ensure_model(name: str, cache_dir: Path | None = None, show_progress: bool | None = None) -> Path:
    """The converted checkpoint folder of catalogue model ``name``, fetched and converted
    on first use; a cached model that fails its checksums is refused. The download shows
    a progress bar when ``show_progress`` says so (default: when stdout is a terminal)."""
    entry = lookup(name)
    show_progress = sys.stdout.isatty() if show_progress is None else show_progress
    folder = (cache_dir or default_cache()) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK_FILE, "a")
    except OSError as error:
        raise ModelError(f"cannot use the model cache {folder}: {error.strerror or error}; set {CACHE_ENV} to a writable folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process fetching this model: wait for it, then use its result
        if (folder / MANIFEST).is_file():
            try:
                verify_checkpoint(folder)
            except CheckpointError as error:
                raise ModelError(
                    f"{error}: the cached model is damaged. Delete {folder / MANIFEST} and run again to convert "
                    f"{folder / f'{entry.file}.pth'} again (it is checked against {SOURCE_RECORD})"
                ) from None
        else:
            _fetch_and_convert(entry, folder, show_progress)
    return folder


def _fetch_and_convert(entry: ModelEntry, folder: Path, show_progress: bool) -> None:
    source = folder / f"{entry.file}.pth"
    if not source.exists():
        url = source_url(entry)
        download = folder.parent / CUT_ARCHIVE if entry.family == "CUT" else source
        manual = (
            f"To fetch it by hand: download {url} (a browser, or `curl -L -C - -o {download} {url}`) to {download} "
            f"and run `i2i models download {entry.name}` again: it verifies and converts that file."
        )
        if entry.family == "CUT":
            _take_from_archive(entry, download, source, manual, show_progress)
        else:
            fetch_file(url, source, entry.name, manual, show_progress, max_bytes=MAX_SOURCE_BYTES)
    digest = sha256_of(source)
    recorded = _recorded_sha256(folder)
    if recorded is None:
        _record(folder, entry, digest, source.stat().st_size)
    elif recorded != digest:
        source.unlink()
        raise ModelError(
            f"{source} has sha256 {digest}, not the {recorded} recorded at its first download "
            f"({folder / SOURCE_RECORD}); it was deleted. Run again to download it again; if the published "
            f"file changed on purpose, delete {folder / SOURCE_RECORD} to trust the new one"
        )
    try:
        import_reference_weights(source, model_recipe(entry), folder)
    except I2IError as error:
        if recorded is None:  # a first download that does not convert is not trusted
            source.unlink()
            (folder / SOURCE_RECORD).unlink()
            raise ModelError(f"{error}\n{source} was deleted; run again to download it again") from None
        raise


def _take_from_archive(entry: ModelEntry, archive: Path, source: Path, manual: str, show_progress: bool) -> None:
    """``source``: the entry's generator taken out of CUT's archive, which is downloaded first
    where it is not in the cache yet (one process at a time: six models share it)."""
    with open(archive.parent / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not archive.exists():
            fetch_file(source_url(entry), archive, CUT_ARCHIVE, manual, show_progress, max_bytes=MAX_SOURCE_BYTES)
    member_suffix = f"{entry.file}_pretrained/latest_net_G.pth"
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            member = next((m for m in members if m.isfile() and m.name.endswith("/" + member_suffix)), None)
            if member is None:
                shown = ", ".join(m.name for m in members[:6])
                raise ModelError(f"{archive} holds no .../{member_suffix} (it holds {shown or 'nothing'}); delete it and "
                                 f"run again to download it again. {manual}")
            if member.size > MAX_SOURCE_BYTES:
                raise ModelError(f"{archive}: {member.name} is {member.size:,} bytes, more than a generator; refused")
            part = source.with_name(source.name + ".part")
            with tar.extractfile(member) as data, open(part, "wb") as out:  # read as bytes: no path from the archive is used
                shutil.copyfileobj(data, out)
            os.replace(part, source)
    except (tarfile.TarError, OSError) as error:
        raise ModelError(f"cannot read {archive} ({error}); delete it and run again to download it again. {manual}") from None


def _recorded_sha256(folder: Path) -> str | None:
    path = folder / SOURCE_RECORD
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path} is unreadable ({error}); delete {path.parent} and download the model again") from None


def _record(folder: Path, entry: ModelEntry, digest: str, size: int) -> None:
    record = {"name": entry.name, "url": source_url(entry), "sha256": digest, "bytes": size,
              "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_file(folder / SOURCE_RECORD, json.dumps(record, indent=1))
