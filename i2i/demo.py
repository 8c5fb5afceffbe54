"""``i2i demo``: a web page to try a trained generator (gradio, the extra ``i2i[demo]``).

The page takes a dropped image (or one of the recipe's val inputs, offered as examples
when its data is on this machine), translates it in the generator mode picked (instance by default, eval or train) through
``i2i.load``'s translator (padding and tiling as ``i2i translate``) and shows input and
output side by side with the time it took. It listens on 127.0.0.1 unless told
otherwise, makes no share link, sends no analytics and loads no outside fonts.

An upload is read by i2i, not by gradio, so that a file that is no image or is too
large is refused with its reason on the page; its size is read from the header before
anything is decoded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image, UnidentifiedImageError

from i2i.api import Translator, load
from i2i.modes import DEFAULT_MODE, MODES, MODES_HELP
from i2i.data.base import DataError
from i2i.data.images import read_rgb
from i2i.engine.build import build_dataset
from i2i.errors import I2IError
from i2i.translate import input_half
from i2i.visual import to_uint8

EXAMPLES = 4  # val inputs offered on the page
IMAGE_HEIGHT = 384  # pixels on the page; the images themselves keep their size
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # a named font would be fetched from Google
# An upload's cap: 5000x5000 takes about 1.5 GB through the translator (float input, output and
# blending buffers); `i2i translate` takes any size.
MAX_PIXELS = 25_000_000


class DemoError(I2IError):
    pass


def _gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # gradio reads it at each call, not only at import
    try:
        import gradio
    except ImportError:
        raise DemoError('the demo needs gradio: pip install "i2i[demo]"') from None
    return gradio


def val_examples(translator: Translator, folder: Path) -> list[Path]:
    """The first val inputs of the recipe's data (its targets for a run's B -> A generator) as
    PNG files in ``folder``; none when the data is not on this machine."""
    side = "target" if translator.metadata.get("direction") == "BtoA" else "input"
    try:
        dataset = build_dataset(translator.recipe, "val", train=False)
        count = min(EXAMPLES, len(dataset))
        inputs = [dataset[index][side] for index in range(count)]
    except (I2IError, OSError):
        return []
    paths = []
    for index, image in enumerate(inputs):
        pixels = to_uint8(image[None])[0]
        path = folder / f"val_{index + 1}.png"
        Image.fromarray(pixels[..., 0] if translator.in_channels == 1 else pixels).save(path)
        paths.append(path)
    return paths


def read_upload(path: Path, name: str) -> Image.Image:
    """The uploaded file as an RGB image; its size is checked from the header, before decoding."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{name} is not an image the demo can read ({error})") from None
    if width * height > MAX_PIXELS:
        raise DataError(f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), over the demo's "
                        f"{MAX_PIXELS / 1e6:.0f} MP; `i2i translate` takes any size")
    return Image.fromarray(read_rgb(path))


def translate_upload(translator: Callable[[str], Translator], upload: dict[str, Any] | None, mode: str) -> tuple[Image.Image, str]:
    """The translated upload (gradio's file payload, unread) and a line saying how long it took."""
    if upload is None or not upload.get("path"):
        raise DataError("Drop an image first.")
    image = read_upload(Path(upload["path"]), upload.get("orig_name") or "the upload")
    run = translator(mode)
    start = time.perf_counter()
    output = run(image)
    return output, f"{image.width}x{image.height} pixels, {mode} mode: {time.perf_counter() - start:.2f} s"


def build_page(source: str, device: str, examples_folder: Path, direction: str = "AtoB"):
    """The gradio page for ``source`` (anything ``i2i.load`` takes) in ``direction``, not yet
    launched; the val examples are written into ``examples_folder``."""
    gr = _gradio()
    translators = {DEFAULT_MODE: load(source, device=device, mode=DEFAULT_MODE, direction=direction)}
    first = translators[DEFAULT_MODE]
    recipe = first.recipe

    def translator(mode: str) -> Translator:
        if mode not in translators:
            translators[mode] = load(source, device=device, mode=mode, direction=direction)
        return translators[mode]

    def translate(upload: dict[str, Any] | None, mode: str):
        try:
            return translate_upload(translator, upload, mode)
        except I2IError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title=f"i2i: {recipe.name}", analytics_enabled=False) as page:
        gr.Markdown(f"## {recipe.name}\n{recipe.description}\n\n`{source}`: generator `{recipe.model.generator.name}`, "
                    f"{first.in_channels} -> {first.out_channels} channels, direction {input_half(first)}")
        with gr.Row():
            source_image = gr.Image(type="filepath", label="input", height=IMAGE_HEIGHT,
                                    sources=["upload", "clipboard"], elem_id="input")
            output_image = gr.Image(type="pil", format="png", label="output", height=IMAGE_HEIGHT, interactive=False,
                                    elem_id="output")
        with gr.Row():
            mode = gr.Radio(list(MODES), value=DEFAULT_MODE, label="generator mode",
                            info=MODES_HELP)
            button = gr.Button("Translate", variant="primary")
        timing = gr.Markdown(elem_id="timing")
        found = val_examples(first, examples_folder)
        if found:
            gr.Examples([[str(path)] for path in found], inputs=source_image, label="val inputs")
        # preprocess=False: the upload reaches ``translate`` unread, so i2i reads it and says why it cannot
        button.click(translate, [source_image, mode], [output_image, timing], preprocess=False)
    return page


def serve(source: str, host: str = "127.0.0.1", port: int | None = None, device: str = "auto",
          on_ready: Callable[[str], None] = print, direction: str = "AtoB") -> None:
    """Build the page, launch it, hand its URL to ``on_ready`` and serve until Ctrl+C or SIGTERM.
    Everything it writes (the val examples, gradio's copies of uploads) lies in one temporary
    folder, removed however the demo stops."""
    check_address(host, port)
    with tempfile.TemporaryDirectory(prefix="i2i-demo-") as examples, _leaving_on_sigterm(), \
            _uploads_in(Path(examples) / "gradio"):
        gr = _gradio()  # imported after GRADIO_TEMP_DIR is set: some of its modules read it once, at import
        theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
        page = build_page(source, device, Path(examples), direction)
        try:
            _, url, _ = page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                                    ssr_mode=False, mcp_server=False, pwa=False, theme=theme, allowed_paths=[examples])
        except OSError as error:  # taken since check_address looked
            raise DemoError(f"cannot listen on {host}:{port}: {error}") from None
        on_ready(url)
        try:
            page.block_thread()
        finally:
            page.close(verbose=False)


@contextlib.contextmanager
def _leaving_on_sigterm() -> Iterator[None]:
    """SIGTERM (a service manager, ``timeout``, ``kill``) leaves as Ctrl+C does, through the
    clean-up of every block, where its default would end the process on the spot. Exit 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _uploads_in(folder: Path) -> Iterator[None]:
    """gradio keeps its copies of uploads and examples in ``GRADIO_TEMP_DIR`` (else /tmp/gradio,
    left there): here, ``folder``."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


def check_address(host: str, port: int | None) -> None:
    """``host`` and ``port`` can be listened on (bound once and let go), before the model loads;
    gradio would report a bad host as a busy port, and a port past 65535 as a traceback."""
    if port is not None and not 1 <= port <= 65535:
        raise DemoError(f"--port {port} is not a port: choose one from 1 to 65535 (or leave it out for the first free one from 7860)")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except socket.gaierror as error:
        raise DemoError(f"--host {host} is no address of this machine ({error.strerror}); use 127.0.0.1, or 0.0.0.0 for every network") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise DemoError(f"port {port} on {host} is in use by another program; choose another --port "
                            f"(or leave it out for the first free one from 7860)") from None
        raise DemoError(f"cannot listen on {host}: {error.strerror or error}; use 127.0.0.1, or 0.0.0.0 for every network") from None
