"""Issue 23, second half: inputs i2i did not write (weights files, the engine cache, uploads to
the demo, downloads, machine-sized options, packaging) end in success or one clear line."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import i2i
from i2i.cli import main
from i2i.engine.build import build_generator
from i2i.engine.checkpoint import CheckpointError, sha256_file, weights_with_checksum
from i2i.errors import I2IError
from i2i.recipe import Recipe

from conftest import tiny_recipe


def run_cli(arguments: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["i2i", *map(str, arguments)])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    for fragment in fragments:
        assert fragment in err, err


# -- weights from a file nobody checked -----------------------------------------------
def tiny_weights() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    recipe = Recipe.from_dict(tiny_recipe())
    generator = build_generator(recipe, 3, 3)
    metadata = {"recipe": recipe.to_yaml(), "in_channels": "3", "out_channels": "3",
                "size_multiple": str(generator.size_multiple), "step": "1"}
    return {k: v.detach().clone().contiguous() for k, v in generator.state_dict().items()}, metadata


def write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    path.write_bytes(weights_with_checksum(tensors, metadata))
    return path


FIRST = "down.0.weight"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_weights_holding_nan_or_inf_are_refused_naming_the_tensor(tmp_path, value, monkeypatch, capsys):
    tensors, metadata = tiny_weights()
    tensors["down.1.1.weight"][0, 0, 0, 0] = value
    file = write_weights(tmp_path / "g.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match="tensor down.1.1.weight holds NaN or infinite values"):
        i2i.load(file, device="cpu")
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    code, err = run_cli(["translate", "--checkpoint", file, "--input", tmp_path / "x.png", "--output", tmp_path / "out"],
                        monkeypatch, capsys)
    assert_one_line(code, err, "down.1.1.weight")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64, torch.uint8])
def test_weights_that_are_not_floating_point_are_refused_naming_the_tensor(tmp_path, dtype):
    tensors, metadata = tiny_weights()
    tensors[FIRST] = tensors[FIRST].to(dtype)
    file = write_weights(tmp_path / "g.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match=f"tensor {FIRST} is .*needs floating point"):
        i2i.load(file, device="cpu")


def test_half_precision_weights_still_load(tmp_path):
    tensors, metadata = tiny_weights()
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    translator = i2i.load(write_weights(tmp_path / "g.safetensors", tensors, metadata), device="cpu")
    assert translator(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30, 3)


BAD_METADATA = {
    "size_multiple -64": ({"size_multiple": "-64"}, "size_multiple"),
    "size_multiple 0": ({"size_multiple": "0"}, "size_multiple"),
    "a size_multiple the U-Net cannot take": ({"size_multiple": "1"}, "size_multiple 1"),
    "a huge size_multiple": ({"size_multiple": "99999999"}, "size_multiple"),
    "in_channels abc": ({"in_channels": "abc"}, "in_channels"),
    "in_channels 0": ({"in_channels": "0"}, "in_channels"),
    "out_channels a million": ({"out_channels": "1000000"}, "out_channels"),
    "a 5000-digit channel count": ({"in_channels": "9" * 5000}, "in_channels"),
    "a step that is no number": ({"step": "x"}, "step"),
    "no recipe": ({"recipe": None}, "recipe"),
    "a recipe that is not YAML": ({"recipe": "name: [unclosed"}, "not valid YAML"),
    "a recipe with a 5000-digit seed": ({"recipe": "train: {seed: " + "9" * 5000 + "}"}, "not valid YAML"),
    "a recipe that is a list": ({"recipe": "[1, 2]"}, "mapping"),
    "a recipe with crop 100000": (None, "crop_size: 100000 is above the limit"),
}


def hostile_metadata(case: str) -> dict[str, str]:
    _, metadata = tiny_weights()
    change, _ = BAD_METADATA[case]
    if change is None:
        recipe = tiny_recipe(data={"load_size": 100000, "crop_size": 100000})
        return {**metadata, "recipe": Recipe.model_validate(recipe).to_yaml()}
    return {k: v for k, v in {**metadata, **change}.items() if v is not None}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_hostile_metadata_is_refused_before_anything_is_built(case, tmp_path, monkeypatch):
    tensors, _ = tiny_weights()
    file = write_weights(tmp_path / "g.safetensors", tensors, hostile_metadata(case))
    monkeypatch.setattr("i2i.engine.build.build_generator", lambda *a, **k: pytest.fail("built from hostile metadata"))
    with pytest.raises(I2IError, match=BAD_METADATA[case][1]) as caught:
        i2i.load(file, device="cpu", backend="fast")
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize("command", ["translate", "export", "bench"])
def test_hostile_metadata_is_one_line_in_every_command(command, tmp_path, monkeypatch, capsys):
    tensors, _ = tiny_weights()
    file = write_weights(tmp_path / "g.safetensors", tensors, hostile_metadata("size_multiple 0"))
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    arguments = {
        "translate": ["translate", "--checkpoint", file, "--input", tmp_path / "x.png", "--output", tmp_path / "out",
                      "--backend", "fast"],
        "export": ["export", "--checkpoint", file, "--output", tmp_path / "g.onnx"],
        "bench": ["bench", "quality", "--checkpoint", file, "--data", tmp_path, "--results", tmp_path / "q.jsonl"],
    }[command]
    code, err = run_cli(arguments, monkeypatch, capsys)
    assert_one_line(code, err, "size_multiple")


def test_a_header_that_claims_more_than_the_file_holds_is_refused_from_the_header(tmp_path):
    _, metadata = tiny_weights()
    claimed = 100000 * 100000 * 8 * 8 * 4
    header = json.dumps({"__metadata__": metadata,
                         FIRST: {"dtype": "F32", "shape": [100000, 100000, 8, 8], "data_offsets": [0, claimed]}}).encode()
    (tmp_path / "g.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    with pytest.raises(CheckpointError, match="cannot read weights"):
        i2i.load(tmp_path / "g.safetensors", device="cpu")


def test_tensors_the_recipe_does_not_build_are_refused_before_any_is_read(tmp_path, monkeypatch):
    """A file holding more than the generator (a Hub file of gigabytes) is refused from its header alone."""
    tensors, metadata = tiny_weights()
    file = write_weights(tmp_path / "g.safetensors", {**tensors, "extra": torch.zeros(1000, 1000)}, metadata)
    monkeypatch.setattr("i2i.engine.checkpoint.load_safetensors_file", lambda *a: pytest.fail("tensors read"))
    with pytest.raises(CheckpointError, match="unexpected extra"):
        i2i.load(file, device="cpu")


def test_the_weights_check_costs_little_on_the_flagship(tmp_path):
    """The flagship U-Net 256 (54M parameters): the finiteness check against loading itself."""
    import time

    from i2i.engine.checkpoint import first_nonfinite

    recipe = Recipe.from_dict(tiny_recipe(model={"generator": {"name": "unet", "params": {}},
                                                 "discriminator": {"name": "patchgan", "params": {}}}))
    tensors = build_generator(recipe, 3, 3).state_dict()
    assert sum(t.numel() for t in tensors.values()) > 54e6
    start = time.perf_counter()
    assert first_nonfinite(tensors) is None
    seconds = time.perf_counter() - start
    print(f"finiteness check of the U-Net 256: {seconds * 1000:.0f} ms")
    assert seconds < 2.0


# -- ONNX files -----------------------------------------------------------------------
def onnx_without_graph(path: Path) -> Path:
    import onnx

    onnx.save(onnx.ModelProto(ir_version=8), path)
    return path


def onnx_with_metadata(path: Path, metadata: dict[str, str]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, "h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("kind", ["random bytes", "no graph", "broken recipe YAML", "size_multiple 0"])
def test_an_onnx_file_that_is_not_an_export_is_one_line(kind, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "g.onnx"
    _, metadata = tiny_weights()
    if kind == "random bytes":
        path.write_bytes(os.urandom(3000))
    elif kind == "no graph":
        onnx_without_graph(path)
    elif kind == "broken recipe YAML":
        onnx_with_metadata(path, {**metadata, "recipe": "name: [x"})
    else:
        onnx_with_metadata(path, {**metadata, "size_multiple": "0"})
    with pytest.raises(I2IError):
        i2i.load(path, device="cpu")
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    code, err = run_cli(["translate", "--checkpoint", path, "--input", tmp_path / "x.png", "--output", tmp_path / "o"],
                        monkeypatch, capsys)
    assert_one_line(code, err, str(path))


# -- import-weights ---------------------------------------------------------------------
def reference_state() -> dict[str, torch.Tensor]:
    from i2i.reference_weights import reference_key

    recipe = Recipe.from_dict(tiny_recipe())
    generator = build_generator(recipe, 3, 3)
    return {reference_key(k, len(generator.down)): v.clone() for k, v in generator.state_dict().items()}


@pytest.mark.parametrize("value", ["nan", "inf", "int", "bool", "complex"])
def test_import_weights_refuses_tensors_that_are_not_finite_floats(value, tmp_path, monkeypatch, capsys, write_recipe):
    state = reference_state()
    name = next(k for k in state if k.endswith("weight"))
    changed = {"nan": lambda t: t.fill_(float("nan")), "inf": lambda t: t.fill_(float("inf")),
               "int": lambda t: t.int(), "bool": lambda t: t.bool(), "complex": lambda t: t.to(torch.complex64)}[value]
    state[name] = changed(state[name])
    torch.save(state, tmp_path / "g.pth")
    recipe = write_recipe(tiny_recipe())
    code, err = run_cli(["import-weights", tmp_path / "g.pth", "--recipe", recipe, "--output", tmp_path / "out"],
                        monkeypatch, capsys)
    assert_one_line(code, err, name)
    assert not (tmp_path / "out").exists()


def test_a_pth_zip_bomb_is_refused_from_its_zip_headers(tmp_path, monkeypatch):
    from i2i.reference_weights import WeightsError, read_reference_weights

    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (20 << 20))
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("inflated"))
    with pytest.raises(WeightsError, match="would inflate"):
        read_reference_weights(bomb)


# -- the engine cache -----------------------------------------------------------------
CPU = torch.device("cpu")


def fake_steps(made: list):
    """``make_step`` for ``choose_engine`` whose steps cost nothing."""

    def make_step(settings):
        made.append(settings)
        return lambda: None

    return make_step


def cache_recipe(**train) -> Recipe:
    return Recipe.from_dict(tiny_recipe(train={"engine_probe": True, **train}))


def choose(recipe: Recipe, notes: list[str], made: list | None = None):
    from i2i.engine.autotune import choose_engine

    return choose_engine(recipe, CPU, (3, 3), fake_steps([] if made is None else made), 1000, notes.append)


@pytest.fixture
def engine_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("I2I_ENGINE_PROBE", raising=False)
    return tmp_path / "cache" / "engine"


def entry_file(recipe: Recipe) -> Path:
    from i2i.engine.autotune import ENGINE_SETTINGS, cache_file, shape_key

    fixed = {name: getattr(recipe.train, name) for name in ENGINE_SETTINGS if getattr(recipe.train, name) is not None}
    return cache_file(shape_key(recipe, CPU, (3, 3), fixed))


def test_a_cache_entry_never_overrides_what_the_recipe_sets(engine_cache):
    recipe = cache_recipe(precision="fp32", channels_last=False)
    first = choose(recipe, [])
    file = entry_file(recipe)
    entry = json.loads(file.read_text())
    entry["settings"].update(precision="bf16", channels_last=True, cuda_graph=True)
    file.write_text(json.dumps(entry))
    choice = choose(recipe, [], made := [])
    assert choice.source == "cached" and not made
    assert choice.settings["precision"] == "fp32" and choice.settings["channels_last"] is False
    assert choice.settings["cuda_graph"] is False  # a CPU cannot use it, whatever the file says
    assert choice.reasons["precision"] == "set in the recipe" and choice.settings == first.settings


def test_an_empty_i2i_cache_is_unset_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("I2I_ENGINE_PROBE", raising=False)
    monkeypatch.chdir(tmp_path)
    choice = choose(cache_recipe(), [])
    assert not (tmp_path / "engine").exists()
    assert choice.cache_file.is_relative_to(tmp_path / "home" / ".cache" / "i2i" / "engine")


DAMAGED_ENTRIES = {
    "not JSON": b"{\"settings\": ",
    "bytes": bytes(range(256)),
    "a list": b"[]",
    "settings a string": {"settings": "x"},
    "an unknown precision": {"settings": {"precision": "fp64"}},
    "a number for a flag": {"settings": {"channels_last": 3}},
    "a number for reasons": {"reasons": 5},
    "comparisons of the wrong type": {"comparisons": "x"},
    "a comparison without settings": {"comparisons": [{"speedup": 2.0}]},
    "complete as text": {"complete": "yes"},
    "no key": {"key": None},
}


@pytest.mark.parametrize("case", list(DAMAGED_ENTRIES))
def test_a_damaged_cache_entry_is_a_note_and_is_replaced(case, engine_cache):
    recipe = cache_recipe()
    choose(recipe, [])
    file = entry_file(recipe)
    damage = DAMAGED_ENTRIES[case]
    if isinstance(damage, bytes):
        file.write_bytes(damage)
    else:
        entry = json.loads(file.read_text())
        for name, value in damage.items():
            if isinstance(value, dict) and isinstance(entry.get(name), dict):
                entry[name].update(value)
            elif value is None:
                del entry[name]
            else:
                entry[name] = value
        file.write_text(json.dumps(entry))
    notes: list[str] = []
    choice = choose(recipe, notes)
    assert choice.source == "measured"
    assert [n for n in notes if n.startswith(f"ignoring the engine cache at {file}: ") and n.endswith("; probing again")]
    assert choose(recipe, notes).source == "cached"  # replaced by the new probe's entry


def test_a_file_where_the_cache_folder_should_be_is_a_note(engine_cache):
    engine_cache.parent.mkdir(parents=True)
    engine_cache.write_text("not a folder")
    notes: list[str] = []
    assert choose(cache_recipe(), notes).source == "measured"
    assert any(n.startswith("ignoring the engine cache at") for n in notes)
    assert any(n.startswith("cannot write the engine cache at") for n in notes)
    assert engine_cache.read_text() == "not a folder"


def test_a_read_only_cache_is_a_note(engine_cache, monkeypatch):
    """As a read-only file system answers every open for writing (chmod does not stop root)."""
    import errno

    opened = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system")
        return opened(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    notes: list[str] = []
    assert choose(cache_recipe(), notes).source == "measured"
    assert notes[-1].startswith("cannot write the engine cache at") and "Read-only file system" in notes[-1]


def test_i2i_run_trains_past_a_file_where_the_cache_folder_should_be(tmp_path, monkeypatch, capsys, write_recipe):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "engine").write_text("not a folder")
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("I2I_ENGINE_PROBE", raising=False)
    recipe = write_recipe(tiny_recipe(train={"max_steps": 1, "engine_probe": True}))
    monkeypatch.setattr(sys, "argv", ["i2i", "run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    assert list((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert "cannot write the engine cache at" in capsys.readouterr().out


# -- the demo ---------------------------------------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (and holds none): a pixel bomb's first bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def demo_translate(tmp_path_factory):
    """The page's Translate handler, as gradio calls it (the upload unread: preprocess=False)."""
    gr = pytest.importorskip("gradio")
    from i2i.demo import build_page

    folder = tmp_path_factory.mktemp("demo")
    file = write_weights(folder / "g.safetensors", *tiny_weights())
    page = build_page(str(file), "cpu", folder)
    (handler,) = [f for f in page.fns.values() if getattr(f.fn, "__name__", "") == "translate"]
    assert handler.preprocess is False
    return handler.fn, gr.Error


@pytest.mark.parametrize("upload, reason", [
    (b"this is a text file, not an image", "notes.txt is not an image the demo can read"),
    (png_header(6000, 6000), "bomb.png is 6000x6000 pixels (36 MP), over the demo's 25 MP"),
    (png_header(20000, 20000), "bomb.png is not an image the demo can read (Image size (400000000 pixels) exceeds limit"),
])
def test_the_demo_says_why_it_cannot_take_an_upload(demo_translate, tmp_path, upload, reason):
    translate, gradio_error = demo_translate
    name = "notes.txt" if reason.startswith("notes") else "bomb.png"
    (tmp_path / name).write_bytes(upload)
    with pytest.raises(gradio_error) as caught:
        translate({"path": str(tmp_path / name), "orig_name": name}, "eval")
    assert reason in caught.value.message


def test_the_demo_translates_an_upload_at_its_size(demo_translate, tmp_path):
    translate, _ = demo_translate
    Image.new("RGB", (45, 30), (200, 10, 10)).save(tmp_path / "x.png")
    output, timing = translate({"path": str(tmp_path / "x.png"), "orig_name": "x.png"}, "eval")
    assert output.size == (45, 30) and timing.startswith("45x30 pixels, eval mode: ")


def test_the_demo_refuses_an_unusable_address_in_one_line(monkeypatch, capsys, tmp_path):
    import socket

    from i2i.demo import DemoError, check_address

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DemoError, match=f"port {port} on 127.0.0.1 is in use by another program"):
            check_address("127.0.0.1", port)
    with pytest.raises(DemoError, match="--host no.such.host.invalid is no address of this machine"):
        check_address("no.such.host.invalid", None)
    with pytest.raises(DemoError, match="cannot listen on 192.0.2.1"):
        check_address("192.0.2.1", None)  # TEST-NET-1: an address of no machine here
    code, err = run_cli(["demo", tmp_path / "missing", "--port", "70000"], monkeypatch, capsys)
    assert_one_line(code, err, "--port 70000 is not a port")


# -- downloads that stall ----------------------------------------------------------------
class TricklingServer:
    """A loopback HTTP server that announces ``length`` bytes, sends ``sent`` of them, then stalls."""

    def __init__(self, length: int, sent: bytes):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(sent)
                self.wfile.flush()
                server.release.wait(30)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def trickle(request):
    servers = []

    def start(length: int, sent: bytes) -> TricklingServer:
        servers.append(TricklingServer(length, sent))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_stalled_download_times_out_and_keeps_what_arrived_flushed(trickle, tmp_path):
    import threading
    import time

    from i2i.data.download import DownloadError, fetch_file

    server = trickle(1000, b"0123456789")
    dest = tmp_path / "model.pth"
    errors = []

    def fetch():
        try:
            fetch_file(f"{server.url}/model.pth", dest, "model", "(by hand)", show_progress=False, retries=1, timeout=5)
        except DownloadError as error:
            errors.append(str(error))

    fetching = threading.Thread(target=fetch)
    fetching.start()
    part = tmp_path / "model.pth.part"
    deadline = time.monotonic() + 4
    while not (part.is_file() and part.stat().st_size == 10) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fetching.is_alive() and part.read_bytes() == b"0123456789", "written while the download waits for more"
    fetching.join(30)
    (message,) = errors
    assert "no byte for 5 s" in message and "keeps the 10 bytes fetched so far" in message


def test_a_download_larger_than_it_can_be_is_refused_from_its_header(trickle, tmp_path, monkeypatch, capsys):
    server = trickle(3 << 30, b"x" * 100)
    monkeypatch.setenv("I2I_MODELS_URL", server.url)
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    code, err = run_cli(["models", "download", "map2sat"], monkeypatch, capsys)
    assert_one_line(code, err, "is over 3,221,225,472 bytes, more than the 1,073,741,824")
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_ctrl_c_during_a_download_ends_with_a_word(trickle, tmp_path, monkeypatch, capsys):
    from rich.progress import Progress

    server = trickle(1000, b"0123456789")
    monkeypatch.setenv("I2I_MODELS_URL", server.url)
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))

    def interrupted(self, task, **fields):
        if fields.get("completed"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", interrupted)
    code, err = run_cli(["models", "download", "map2sat"], monkeypatch, capsys)
    assert code == 130 and "Traceback" not in err
    assert err.startswith("error: download of ") and "interrupted" in err and "keeps the 10 bytes" in err


# -- process counts and values too long to parse ---------------------------------------
def test_nproc_above_the_cpu_cores_is_refused_in_one_line_before_any_rank_starts(tmp_path, monkeypatch, capsys, write_recipe):
    from i2i.engine import distributed

    monkeypatch.setattr(distributed, "launch", lambda *a: pytest.fail("ranks started"))
    recipe = write_recipe(tiny_recipe(train={"max_steps": 1}))
    cores = len(os.sched_getaffinity(0))
    code, err = run_cli(["run", recipe, "--nproc", cores + 1, "--out", tmp_path / "run"], monkeypatch, capsys)
    assert_one_line(code, err, f"--nproc {cores + 1} is more than the {cores} CPU core(s)", "--force-nproc")
    assert not (tmp_path / "run").exists()


def test_nproc_above_the_memory_is_refused_and_force_starts_it_anyway(tmp_path, monkeypatch, capsys, write_recipe):
    from i2i.engine import distributed

    started = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, args: started.append(nproc))
    monkeypatch.setattr(distributed, "available_memory", lambda: 3 << 30)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    recipe = write_recipe(tiny_recipe(train={"max_steps": 1}))
    code, err = run_cli(["run", recipe, "--nproc", 64, "--out", tmp_path / "run"], monkeypatch, capsys)
    assert_one_line(code, err, "--nproc 64 needs about 64.", "more than the 3.0 GiB available")
    monkeypatch.setattr(sys, "argv", ["i2i", "run", str(recipe), "--nproc", "64", "--force-nproc", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0 and started == [64]


def test_a_cuda_run_gets_one_process_per_gpu():
    from i2i.engine.distributed import process_count_problem

    gpus = torch.cuda.device_count()
    assert process_count_problem(gpus + 1, torch.device("cuda"), 1000) == (
        f"--nproc {gpus + 1} is more than the {gpus} GPU(s) here (one process per GPU)")


def test_num_workers_has_a_bound():
    from i2i.recipe import RecipeError

    with pytest.raises(RecipeError, match="data.num_workers: Input should be less than or equal to 64"):
        Recipe.from_dict(tiny_recipe(data={"num_workers": 500}))


def test_a_value_too_long_to_parse_is_a_recipe_error(tmp_path, monkeypatch, capsys, write_recipe):
    recipe = write_recipe(tiny_recipe())
    code, err = run_cli(["validate", recipe, "--set", "train.seed=" + "9" * 5000], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err and "train.seed" in err and len(err) < 1000
    text = recipe.read_text().replace("name: tiny", "name: tiny\ndescription: " + "9" * 5000)
    recipe.write_text(text.replace("epochs: 1", "epochs: " + "9" * 5000, 1))
    code, err = run_cli(["validate", recipe], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err and "not valid YAML" in err


# -- a wheel that works -------------------------------------------------------------------
def test_recipes_that_come_with_i2i_are_found_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["i2i", "validate", "pix2pix_maps", "--set", "model.generator.params.ngf=4"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0 and "ok pix2pix_maps" in capsys.readouterr().out
    assert Recipe.from_file("pix2pix_maps").name == "pix2pix_maps"
    (tmp_path / "pix2pix_maps").mkdir()  # a path still wins over a name
    code, err = run_cli(["validate", "pix2pix_maps"], monkeypatch, capsys)
    assert code == 2 and "pix2pix_maps" in err and "is a folder, not a recipe file; it hides the recipe" in err


def test_a_checkout_without_pip_install_says_so(monkeypatch):
    from importlib import metadata

    from i2i.contracts import Generator
    from i2i.registry import Registry, RegistryError

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    monkeypatch.setattr(metadata, "entry_points", lambda **kwargs: [])
    with pytest.raises(RegistryError, match=r"unknown generator 'unet': i2i is not installed \(run pip install -e \.\)"):
        Registry("generator", "i2i.generators", Generator).get("unet")


def test_without_its_recipes_a_name_says_i2i_is_not_installed(monkeypatch, tmp_path):
    from i2i import recipe
    from i2i.recipe import RecipeError

    monkeypatch.setattr(recipe, "shipped_recipes", lambda: tmp_path / "missing")
    with pytest.raises(RecipeError, match=r"i2i is not installed \(run pip install -e \.\)"):
        Recipe.from_file("pix2pix_maps")


def test_push_refuses_weights_without_a_step_in_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    tensors, metadata = tiny_weights()
    del metadata["step"]
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000001"
    checkpoint.mkdir(parents=True)
    file = write_weights(checkpoint / "generator.safetensors", tensors, metadata)
    (checkpoint / "manifest.json").write_text(json.dumps({"step": 1, "files": {file.name: sha256_file(file)}}))
    code, err = run_cli(["push", tmp_path / "run", "--repo", "someone/model"], monkeypatch, capsys)
    assert_one_line(code, err, "holds no training step in its metadata")
