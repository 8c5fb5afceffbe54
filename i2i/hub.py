"""The Hugging Face Hub: ``i2i push`` publishes a run's generator; ``hf://`` sources load one.

A pushed repo holds:

    generator.safetensors      # the run's newest good checkpoint; its metadata carries the recipe
    generator_ba.safetensors   # its B -> A generator, where the method trains one (cyclegan)
    recipe.yaml                # that recipe, to read
    samples/step_XXXXXXXX.png  # the newest sample grid up to that step, when the run wrote one
    README.md                  # the model card (i2i.model_card)

Everything goes through ``huggingface_hub`` (the extra ``i2i[hub]``), so HF_ENDPOINT,
HF_HOME, HF_TOKEN and ``hf auth login`` work as for every Hub client. A token is handed
to huggingface_hub only: i2i never prints it or writes it anywhere.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

from i2i.engine.inference import (
    GENERATOR_FILE,
    load_generator,
    resolve_generator_file,
    reverse_generator_file,
    reverse_generator_name,
)
from i2i.errors import I2IError
from i2i.model_card import model_card, recorded_evaluations
from i2i.registry import METHODS
from i2i.report import sample_grids

PREFIX = "hf://"
QUALITY_RESULTS = Path("benchmarks") / "results" / "quality.jsonl"  # where `i2i bench quality` appends
# The Hub's own rule for each of owner and name (huggingface_hub's validate_repo_id): 1 to 96 letters,
# digits and . _ -, starting and ending with a letter or digit, without -- or .. (and no name ending .git).
_REPO_PART = r"\w(?:[\w.-]{0,94}\w)?"
_REPO_ID = re.compile(rf"{_REPO_PART}/{_REPO_PART}")
_REVISION = re.compile(r"[A-Za-z0-9._/-]+")
# What huggingface_hub may name a cache file after (the ETag and commit a server sends): one path part.
_CACHE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class HubError(I2IError):
    pass


class Pushed(NamedTuple):
    url: str
    step: int
    files: list[str]


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise HubError('the Hugging Face Hub needs huggingface_hub: pip install "i2i[hub]"') from None
    return huggingface_hub


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``[hf://]owner/name[@revision]`` -> (repo id, revision or None)."""
    repo_id, at, revision = spec.removeprefix(PREFIX).partition("@")
    if at and not revision:
        raise HubError(f"{spec!r} is not a Hub model: expected hf://owner/name or hf://owner/name@revision")
    check_repo_id(repo_id)
    if revision and (not _REVISION.fullmatch(revision) or ".." in revision):
        raise HubError(f"revision {revision!r} is not a branch, tag or commit name: use letters, digits and . _ / - (no ..)")
    return repo_id, revision or None


def check_repo_id(repo_id: str) -> None:
    """``owner/name`` as the Hub takes it, checked here so that a bad one is one line (not
    huggingface_hub's HFValidationError) before the Hub is asked."""
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        shown = repo_id if len(repo_id) <= 100 else f"{repo_id[:80]}..."
        raise HubError(f"{shown!r} is not a Hub repository id: expected hf://owner/name[@revision] to load (owner/name "
                       f"for --repo), each part 1 to 96 letters, digits and . _ -, starting and ending with a letter "
                       f"or digit, without -- or ..")


def _refuse_names_leaving_the_cache(hub, repo_id: str, filename: str, revision: str | None, where: str) -> None:
    """huggingface_hub names its cache files after the ETag and the commit the server sends, unchecked
    (2.4): asked first, a name that is not one plain path part is refused before anything is written."""
    from huggingface_hub.errors import HTTPError

    try:
        served = hub.get_hf_file_metadata(hub.hf_hub_url(repo_id, filename, revision=revision))
    except (HTTPError, OSError):  # out of reach, offline, no such file: the download says which, or uses the cache
        return
    for what, name in (("ETag", served.etag), ("commit", served.commit_hash)):
        if name is not None and (not _CACHE_NAME.fullmatch(name) or ".." in name):
            raise HubError(f"{where}: the Hub sent the {what} {name!r}, which would name a file outside the download "
                           f"cache; nothing was downloaded (is HF_ENDPOINT a Hub you trust?)")


def _inside_cache(hub, path: Path, where: str) -> Path:
    """The downloaded file, once its real path is known to lie in the Hub cache."""
    cache = Path(hub.constants.HF_HUB_CACHE).resolve()
    if not path.resolve().is_relative_to(cache):
        raise HubError(f"{where}: the download landed outside the Hub cache {cache} ({path.resolve()}); not loading it")
    return path


def download_from_hub(spec: str, direction: str = "AtoB") -> Path:
    """The ``generator.safetensors`` of ``[hf://]owner/name[@revision]``, downloaded into the Hub cache;
    for ``direction`` BtoA the run's other generator too, beside it, where ``load_generator`` looks."""
    generator = _download(spec, GENERATOR_FILE)
    if direction == "BtoA":
        _download(spec, reverse_generator_name(generator))
    return generator


def _download(spec: str, filename: str) -> Path:
    hub = _huggingface_hub()
    from huggingface_hub.errors import (
        HTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = parse_spec(spec)
    where = PREFIX + repo_id + (f"@{revision}" if revision else "")
    try:
        _refuse_names_leaving_the_cache(hub, repo_id, filename, revision, where)
        return _inside_cache(hub, Path(hub.hf_hub_download(repo_id, filename, revision=revision)), where)
    except RemoteEntryNotFoundError:
        what = "it is not an i2i generator" if filename == GENERATOR_FILE else "it was pushed without the B -> A generator"
        raise HubError(f"{where} has no {filename}: {what} (`i2i push RUN --repo {repo_id}` makes one)") from None
    except RevisionNotFoundError:
        raise HubError(f"{where}: the repository has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise HubError(f"{where}: no such repository, or it is private and no token was found "
                       "(set HF_TOKEN or run `hf auth login`)") from None
    except LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if hub.constants.HF_HUB_OFFLINE else ""
        raise HubError(f"{where}: {filename} is not in the cache and the Hub ({hub.constants.ENDPOINT}) "
                       f"cannot be reached{offline}") from None
    except (HTTPError, OSError) as error:  # HTTPError: the base of huggingface_hub's errors, and of the transport's
        raise HubError(f"{where}: download from {hub.constants.ENDPOINT} failed: {_first_line(error)}") from None


def _own_file(run_dir: Path, path: Path) -> Path:
    """A regular file of the run itself: a link leading elsewhere could upload any file the user can read."""
    if not path.resolve().is_relative_to(run_dir.resolve()) or not path.is_file():
        raise HubError(f"refusing to upload {path}: it leads outside the run directory {run_dir} (a symbolic link) or is "
                       f"not a regular file; i2i push uploads only the run's own files")
    return path


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def push_to_hub(
    run_dir: Path,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    quality_results: Path | None = QUALITY_RESULTS,
    warn: Callable[[str], None] = warnings.warn,
) -> Pushed:
    """Upload the run's newest good generator, its recipe, its newest sample grid and a model card
    to ``repo_id`` (created if missing) in one commit. ``token``: None uses HF_TOKEN or the login."""
    hub = _huggingface_hub()
    from huggingface_hub.errors import HTTPError

    run_dir = Path(run_dir)
    parse_spec(repo_id if revision is None else f"{repo_id}@{revision}")
    if not (run_dir / "checkpoints").is_dir():
        raise HubError(f"{run_dir} is not a run directory with checkpoints; pass the folder `i2i run` wrote")
    weights = resolve_generator_file(run_dir, warn)  # the newest checkpoint whose generator matches its manifest
    _, recipe, metadata = load_generator(weights)  # checks the file's own checksum and that it builds
    recipe_yaml = metadata["recipe"]
    if "step" not in metadata:  # the other fields are checked by load_generator; a run's own checkpoints carry this one
        raise HubError(f"{weights} holds no training step in its metadata: it is not a checkpoint `i2i run` wrote")
    step = int(metadata["step"])
    grids = [path for grid_step, path in sample_grids(run_dir) if grid_step <= step]
    sample = grids[0] if grids else None
    card = model_card(repo_id, recipe, recipe_yaml, step, metadata.get("i2i_version", "?"), sample,
                      recorded_evaluations(run_dir, step, quality_results, warn))
    uploads: dict[str, Path | bytes] = {GENERATOR_FILE: _own_file(run_dir, weights), "recipe.yaml": recipe_yaml.encode(),
                                        "README.md": card.encode()}
    if "BtoA" in METHODS.get(recipe.method.name, recipe.plugins).obj.directions:
        reverse = reverse_generator_file(weights)
        load_generator(reverse)  # as the generator: its checksum, and that it builds
        uploads[reverse.name] = _own_file(run_dir, reverse)
    if sample:
        uploads[sample] = _own_file(run_dir, run_dir / sample)
    api = hub.HfApi(token=token)
    try:
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
        except KeyError:  # huggingface_hub 2.4 reads a URL from the Hub's "already exists" reply, which may have none
            pass
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.create_commit(
            repo_id,
            [hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in uploads.items()],
            commit_message=f"i2i push: {recipe.name}, step {step}",
            revision=revision,
        )
    except (HTTPError, OSError) as error:  # as in download_from_hub; OSError: offline mode, unreadable files
        raise HubError(f"pushing to {repo_id} at {api.endpoint} failed: {_first_line(error)}") from None
    url = f"{api.endpoint}/{repo_id}" + (f"/tree/{revision}" if revision else "")
    return Pushed(url, step, list(uploads))
