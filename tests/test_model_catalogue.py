"""The model catalogue end to end against an HTTP server on 127.0.0.1 that the test starts.

The published generators are full U-Net 256s (217 MB each), so the downloads here use a
catalogue entry added for the test: a small reference-layout U-Net and a recipe to match.
"""

from __future__ import annotations

import copy
import hashlib
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from i2i.cli import app
from i2i.data.download import DownloadError
from i2i.engine.inference import load_generator
from i2i.model_catalogue import (
    MODELS,
    SOURCE_RECORD,
    ModelEntry,
    ModelError,
    ensure_model,
    is_cached,
    is_model_name,
    model_recipe,
)
from i2i.models.unet import UNetParams
from test_download import server  # noqa: F401  (the loopback server fixture)
from test_reference_weights import ReferenceUNet, trained_looking, unet_recipe

NAME = "tiny_map2sat"


@pytest.fixture
def published(server, tmp_path, monkeypatch):
    """A small reference generator published as NAME.pth, a catalogue entry for it, and a
    cache in tmp_path; returns (reference module, file bytes)."""
    reference = trained_looking(ReferenceUNet(3, 3, 6, 8)).eval()
    buffer = tmp_path / "published.pth"
    torch.save(reference.state_dict(), buffer)
    body = buffer.read_bytes()
    server.publish(f"{NAME}.pth", body)
    recipe = tmp_path / "tiny_pix2pix_maps.yaml"
    recipe.write_text(yaml.safe_dump(unet_recipe(6, 8).model_dump(mode="json")))
    monkeypatch.setitem(MODELS, NAME, ModelEntry(NAME, "map -> aerial photo (small)", str(recipe), "BtoA"))
    monkeypatch.setenv("I2I_MODELS_URL", server.url + "/")
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    return reference, body


def test_download_converts_records_and_is_cached(published, server, tmp_path, one_torch_thread):
    reference, body = published
    assert not is_cached(NAME)
    folder = ensure_model(NAME)
    assert folder == tmp_path / "cache" / "models" / NAME
    assert sorted(p.name for p in folder.iterdir()) == sorted([".lock", f"{NAME}.pth", SOURCE_RECORD, "generator.safetensors", "manifest.json"])
    record = json.loads((folder / SOURCE_RECORD).read_text())
    assert record["sha256"] == hashlib.sha256(body).hexdigest() and record["url"] == f"{server.url}/{NAME}.pth"
    generator, recipe, _ = load_generator(folder)
    assert recipe.data.direction == "BtoA" and "published tiny_map2sat generator" in recipe.description
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(generator.eval()(x), reference(x), atol=1e-6, rtol=0)
    assert ensure_model(NAME) == folder and is_cached(NAME)
    assert len(server.ranges) == 1, "a cached model is not fetched again"


def test_dropped_connection_resumes(published, server):
    _, body = published
    server.cut_next = len(body) // 3
    ensure_model(NAME)
    assert server.ranges == [None, f"bytes={len(body) // 3}-"]


def test_two_processes_asking_at_once_download_once(published, server):
    with ThreadPoolExecutor(2) as pool:  # each call opens the lock file itself, as another process would
        folders = list(pool.map(lambda _: ensure_model(NAME), range(2)))
    assert folders[0] == folders[1] and len(server.ranges) == 1


def test_tampered_cache_is_refused(published, server):
    _, body = published
    folder = ensure_model(NAME)
    weights = folder / "generator.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ModelError, match="manifest.json.*the cached model is damaged"):
        ensure_model(NAME)

    # The converted weights deleted and the download changed: checked against the first download's sha256.
    (folder / "manifest.json").unlink()
    (folder / f"{NAME}.pth").write_bytes(body[:-1] + bytes([body[-1] ^ 1]))
    with pytest.raises(ModelError, match="recorded at its first download.*it was deleted"):
        ensure_model(NAME)
    assert not (folder / f"{NAME}.pth").exists()

    # The server now serves another file: refused as well, the record stays.
    server.publish(f"{NAME}.pth", body + b"more")
    with pytest.raises(ModelError, match="recorded at its first download"):
        ensure_model(NAME)
    server.publish(f"{NAME}.pth", body)
    assert ensure_model(NAME) == folder, "the file as first downloaded converts again"


def test_first_download_that_does_not_convert_is_not_trusted(published, server, tmp_path):
    server.publish(f"{NAME}.pth", b"<html>not found</html>")
    with pytest.raises(ModelError, match="was deleted; run again"):
        ensure_model(NAME)
    assert [p.name for p in (tmp_path / "cache" / "models" / NAME).iterdir()] == [".lock"]


def test_offline_error_names_the_url_and_the_manual_steps(published, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("I2I_MODELS_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError) as error:
        ensure_model(NAME)
    message = str(error.value)
    assert f"http://127.0.0.1:{port}/{NAME}.pth" in message and "curl" in message
    assert f"i2i models download {NAME}" in message


def test_unknown_names_get_close_suggestions():
    assert is_model_name("map2sat") and not is_model_name("map2sta")
    with pytest.raises(ModelError, match="unknown model 'map2sta'; did you mean map2sat"):
        ensure_model("map2sta")
    with pytest.raises(ModelError, match="unknown model 'zebra'; the catalogue has edges2shoes"):
        ensure_model("zebra")


@pytest.mark.parametrize("name", ["edges2shoes", "sat2map", "map2sat", "facades_label2photo", "day2night"])
def test_published_models_match_a_recipe_with_the_reference_unet_256(name):
    """Each published generator is the reference's unet_256 with batch norm and dropout."""
    entry = MODELS[name]
    recipe = model_recipe(entry)
    assert recipe.model.generator.name == "unet"
    assert recipe.model.generator.params == UNetParams(num_downs=8, ngf=64, norm="batch", dropout=0.5)
    assert recipe.data.direction == entry.direction
    expected = {"edges2shoes": "AtoB", "sat2map": "AtoB", "map2sat": "BtoA", "facades_label2photo": "BtoA", "day2night": "BtoA"}
    assert entry.direction == expected[name]


def test_cli_list_and_download(published, server, tmp_path, one_torch_thread):
    _, body = published
    runner = CliRunner()
    listing = runner.invoke(app, ["models", "list"])
    assert listing.exit_code == 0, listing.output
    assert all(name in listing.output for name in MODELS)
    row = next(line for line in listing.output.splitlines() if "│ map2sat " in line)
    assert [cell.strip() for cell in row.split("│")][3:6] == ["pix2pix_maps", "BtoA", "no"]
    folder = tmp_path / "cache" / "models" / NAME
    folder.mkdir(parents=True)
    (folder / f"{NAME}.pth.part").write_bytes(body[:1000])  # left by an interrupted download
    result = runner.invoke(app, ["models", "download", NAME])
    assert result.exit_code == 0, result.output
    assert server.ranges == ["bytes=1000-"]
    assert f"i2i translate --checkpoint {folder} " in result.output
    row = next(line for line in runner.invoke(app, ["models", "list"]).output.splitlines() if NAME in line)
    assert "yes" in row


def test_i2i_load_by_catalogue_name(published, one_torch_thread):
    """The default mode normalizes each image by its own statistics (the reference's BatchNorm
    in training mode at batch 1, without dropout); eval mode uses the published running statistics."""
    import i2i

    reference, _ = published
    per_image = copy.deepcopy(reference)
    for module in per_image.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.train()
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1)[None]
    for mode, model in (("eval", reference), (None, per_image)):
        translator = i2i.load(NAME, device="cpu", **({"mode": mode} if mode else {}))
        with torch.no_grad():
            expected = model(x)[0].add(1).mul(127.5).round().clamp(0, 255).permute(1, 2, 0).numpy()
        assert np.abs(translator(image).astype(int) - expected.astype(int)).max() <= 1, mode
