"""i2i.translate: any image size, tiles, batches, aligned inputs, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from i2i.api import to_tensor
from i2i.data.base import DataError
from i2i.engine.inference import (
    blend_window,
    generator_mode,
    load_generator,
    pad_to_multiple,
    run_tiled,
    tile_starts,
    translate_batch,
)
from i2i.translate import translate_paths

from conftest import tiny_recipe

MULTIPLE = 2 ** tiny_recipe()["model"]["generator"]["params"]["num_downs"]  # what the tiny run's U-Net needs


def write_image(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("length,tile,overlap", [(10, 32, 8), (32, 32, 8), (100, 32, 8), (96, 32, 0), (200, 64, 63)])
def test_tiles_cover_everything_and_overlap_enough(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + tile] = True
        assert 0 <= start and start + min(tile, length) <= length
    assert covered.all()
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_blend_window_ramps_and_never_vanishes():
    weights = blend_window(64, 16)
    assert weights.min() > 0 and weights.max() == 1
    assert torch.equal(weights, weights.flip(0))
    assert weights[16:48].eq(1).all() and (weights[:16].diff() > 0).all()


def test_tiled_pointwise_generator_equals_whole_image():
    x = torch.randn(2, 3, 96, 160)
    whole = torch.tanh(x * 3)
    tiled = run_tiled(lambda t: torch.tanh(t * 3), x, tile=64, overlap=16, batch_size=3)
    torch.testing.assert_close(tiled, whole)


def test_pad_keeps_content_and_reaches_the_multiple():
    x = torch.randn(1, 3, 45, 70)
    padded, size = pad_to_multiple(x, 32)
    assert padded.shape[-2:] == (64, 96) and size == (45, 70)
    assert torch.equal(padded[..., :45, :70], x)


def test_tiles_of_a_real_generator_agree_with_the_whole_image(tiny_run):
    generator, _, _ = load_generator(tiny_run)
    rng = np.random.default_rng(0)
    x = to_tensor(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), 3)
    with generator_mode(generator, "eval"), torch.no_grad():
        whole = translate_batch(generator, x, MULTIPLE, tile=1024, overlap=0, batch_size=1)
        error = {
            overlap: (translate_batch(generator, x, MULTIPLE, tile=64, overlap=overlap, batch_size=4) - whole).abs().mean()
            for overlap in (0, 32)
        }
    # Seams come from each tile's zero-padded border; a wide blended overlap hides them.
    assert error[32] < error[0] / 2 and error[32] < 1e-3


def test_any_size_comes_back_at_its_size(tiny_run, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    sizes = {"wide": (70, 45), "small": (20, 13), "large": (150, 100)}
    for seed, (stem, size) in enumerate(sizes.items()):
        write_image(source / f"{stem}.jpg", *size, seed=seed)
    (source / "notes.txt").write_text("not an image")
    written = translate_paths(tiny_run, source, tmp_path / "out", tile=64, overlap=16, batch_size=2)
    assert sorted(p.name for p in written) == ["large.png", "small.png", "wide.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.size == sizes[path.stem]


def test_batches_give_the_same_images_as_one_at_a_time_in_eval_mode(tiny_run, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for i in range(3):
        write_image(source / f"{i}.png", 40, 40, seed=i)
    progress = []
    one = translate_paths(tiny_run, source, tmp_path / "one", batch_size=1)
    three = translate_paths(tiny_run, source, tmp_path / "three", batch_size=3,
                            on_progress=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    for a, b in zip(one, three):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_aligned_input_uses_the_recipes_input_half(tiny_run, tmp_path):
    pair = np.zeros((32, 64, 3), np.uint8)
    pair[:, 32:] = 255  # A black, B white
    Image.fromarray(pair).save(tmp_path / "pair.png")
    Image.fromarray(pair[:, :32]).save(tmp_path / "a.png")
    aligned = translate_paths(tiny_run, tmp_path / "pair.png", tmp_path / "out", aligned=True)[0]
    plain = translate_paths(tiny_run, tmp_path / "a.png", tmp_path / "out")[0]
    assert Image.open(aligned).size == (32, 32)
    assert np.array_equal(np.asarray(Image.open(aligned)), np.asarray(Image.open(plain)))  # tiny_recipe is AtoB


def test_mode_decides_between_running_and_batch_statistics(tiny_run, tmp_path):
    image = write_image(tmp_path / "x.png", 32, 32)

    def pixels(mode, folder):
        return np.asarray(Image.open(translate_paths(tiny_run, image, tmp_path / folder, mode=mode)[0]), np.int16)

    eval_once, eval_twice, train = pixels("eval", "e1"), pixels("eval", "e2"), pixels("train", "t")
    assert np.array_equal(eval_once, eval_twice)
    assert np.abs(eval_once - train).mean() > 1  # a 4-step BatchNorm's running stats are far from the batch's


@pytest.mark.parametrize(
    "kwargs,message",
    [({"mode": "test"}, "mode must be one of eval, instance, train"), ({"overlap": 64, "tile": 64}, "overlap < tile"),
     ({"aligned": True}, "width 33 is odd")],
)
def test_bad_requests_are_explained(tiny_run, tmp_path, kwargs, message):
    image = write_image(tmp_path / "odd.png", 33, 20)
    with pytest.raises(DataError, match=message):
        translate_paths(tiny_run, image, tmp_path / "out", **kwargs)


def test_missing_input_is_explained(tiny_run, tmp_path):
    with pytest.raises(DataError, match="input not found"):
        translate_paths(tiny_run, tmp_path / "nothing", tmp_path / "out")


def test_checkpoints_record_the_size_multiple_translate_pads_to(tiny_run):
    """Exports carry the checkpoint's metadata, so an ONNX file also tells translate how to pad."""
    _, _, metadata = load_generator(tiny_run, "cpu")
    assert metadata["size_multiple"] == "32"  # tiny_recipe's U-Net: num_downs 5


# ------------------------------------------------------- issue 16: hostile use
def digests(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_an_output_folder_that_would_overwrite_inputs_is_refused(tiny_run, tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", 32, 32, seed=i)
    before = digests(tmp_path)
    for output in (tmp_path, tmp_path / "." / "sub" / ".."):
        with pytest.raises(DataError, match="would overwrite input images .*0.png.*choose another output folder"):
            translate_paths(tiny_run, tmp_path, output)
    with pytest.raises(DataError, match="would overwrite input images"):
        translate_paths(tiny_run, tmp_path / "1.png", tmp_path)
    assert digests(tmp_path) == before


def test_an_output_folder_inside_the_inputs_or_beside_other_formats_is_fine(tiny_run, tmp_path):
    write_image(tmp_path / "a.jpg", 32, 32)
    before = digests(tmp_path)
    assert [p.name for p in translate_paths(tiny_run, tmp_path, tmp_path)] == ["a.png"]
    assert [p.name for p in translate_paths(tiny_run, tmp_path / "a.jpg", tmp_path / "sub")] == ["a.png"]
    assert {k: v for k, v in digests(tmp_path).items() if k in before} == before


def test_inputs_sharing_a_stem_keep_their_extension(tiny_run, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    write_image(source / "x.jpg", 32, 32, seed=1)
    write_image(source / "x.png", 32, 32, seed=2)
    write_image(source / "y.png", 32, 32, seed=3)
    written = translate_paths(tiny_run, source, tmp_path / "out")
    assert [p.name for p in written] == ["x.jpg.png", "x.png.png", "y.png"]
    assert not np.array_equal(np.asarray(Image.open(written[0])), np.asarray(Image.open(written[1])))


def test_names_that_still_collide_are_refused_before_anything_is_written(tiny_run, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for name in ("x.jpg", "x.png", "x.jpg.png"):
        write_image(source / name, 32, 32)
    with pytest.raises(DataError, match=r"same output name: .*x\.jpg, .*x\.jpg\.png; rename"):
        translate_paths(tiny_run, source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_images_stop_the_folder_or_are_skipped_and_reported(tiny_run, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    write_image(source / "1.png", 32, 32)
    (source / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_image(source / "3.png", 32, 32)
    with pytest.raises(DataError, match="2.png: cannot decode image"):
        translate_paths(tiny_run, source, tmp_path / "stopped")
    skipped, progress = [], []
    written = translate_paths(tiny_run, source, tmp_path / "out", on_bad_image="skip", batch_size=2,
                              on_skip=lambda file, reason: skipped.append((file.name, reason)),
                              on_progress=lambda done, total: progress.append((done, total)))
    assert [p.name for p in written] == ["1.png", "3.png"]
    assert [name for name, _ in skipped] == ["2.png"] and "cannot decode image" in skipped[0][1]
    assert progress[-1] == (3, 3)
    with pytest.raises(DataError, match="--on-bad-image must be error or skip"):
        translate_paths(tiny_run, source, tmp_path / "out", on_bad_image="ignore")


def test_the_cli_reports_skipped_images(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from i2i.cli import app

    source = tmp_path / "in"
    source.mkdir()
    write_image(source / "good.png", 32, 32)
    (source / "bad.jpg").write_bytes(b"not a jpeg")
    result = CliRunner().invoke(app, ["translate", "--checkpoint", str(tiny_run), "--input", str(source),
                                      "--output", str(tmp_path / "out"), "--on-bad-image", "skip"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "skipped: " in text and "bad.jpg" in text and "wrote 1 image(s)" in text and "skipped 1 unreadable" in text


@pytest.mark.parametrize("tile,overlap,multiple", [(63, 40, 32), (40, 32, 32), (33, 32, 32), (64, 64, 32), (500, 300, 256)])
def test_an_overlap_not_below_the_rounded_tile_is_refused(tile, overlap, multiple):
    """Old behaviour: 63/40 rounded the tile to 32 below the overlap (one window: black
    elsewhere), 40/32 and 33/32 gave a zero stride (ValueError from range), 500/300 with
    the U-Net 256 computed one window of a 1024 px image."""
    with pytest.raises(DataError, match=f"overlap {overlap} must be smaller than the tile, which is"):
        translate_batch(lambda t: t, torch.zeros(1, 3, 300, 300), multiple, tile, overlap, 1)


@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 31), (47, 20), (64, 63), (96, 50), (1000, 64)])
def test_every_accepted_tiling_covers_every_pixel(tile, overlap):
    x = torch.rand(1, 3, 100, 75) * 2 - 1
    try:
        y = translate_batch(lambda t: t.flip(1) * 0.5, x, MULTIPLE, tile, overlap, 4)
    except DataError as error:
        assert "over the limit" in str(error)
        return
    torch.testing.assert_close(y, x.flip(1) * 0.5)


def test_a_tile_count_over_the_cap_is_refused_at_once():
    """Old behaviour: --tile 64 --overlap 63 on a 300 px image ran 65,536 tiles for minutes."""
    calls = []
    with pytest.raises(DataError, match=r"needs 66049 tiles of 64 px .* over the limit of 4096; use a larger tile"):
        translate_batch(lambda t: calls.append(t) or t, torch.zeros(1, 3, 300, 300), MULTIPLE, 64, 63, 1)
    assert not calls


@pytest.mark.parametrize("make", ["file", "under a file"])
def test_an_output_that_cannot_be_a_folder_is_one_clear_line(tiny_run, tmp_path, monkeypatch, capsys, make):
    from i2i.cli import main

    write_image(tmp_path / "x.png", 32, 32)
    (tmp_path / "taken").write_text("a file")
    output = tmp_path / "taken" if make == "file" else tmp_path / "taken" / "out"
    monkeypatch.setattr("sys.argv", ["i2i", "translate", "--checkpoint", str(tiny_run), "--input",
                                     str(tmp_path / "x.png"), "--output", str(output)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert ("is a file; give a folder" if make == "file" else "cannot create the output folder") in err
