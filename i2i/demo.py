"""``i2i demo``: a web page to try a trained generator (gradio, the extra ``i2i[demo]``).

The page takes a dropped image (or one of the recipe's val inputs, offered as examples
when its data is on this machine), translates it in eval or train mode through
``i2i.load``'s translator (padding and tiling as ``i2i translate``) and shows input and
output side by side with the time it took. It listens on 127.0.0.1 unless told
otherwise, makes no share link, sends no analytics and loads no outside fonts.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from i2i.api import MODES, Translator, load
from i2i.engine.build import build_dataset
from i2i.errors import I2IError
from i2i.visual import to_uint8

EXAMPLES = 4  # val inputs offered on the page
IMAGE_HEIGHT = 384  # pixels on the page; the images themselves keep their size
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # a named font would be fetched from Google


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
    """The first val inputs of the recipe's data as PNG files in ``folder``; none when the data
    is not on this machine."""
    try:
        dataset = build_dataset(translator.recipe, "val", train=False)
        count = min(EXAMPLES, len(dataset))
        inputs = [dataset[index]["input"] for index in range(count)]
    except (I2IError, OSError):
        return []
    paths = []
    for index, image in enumerate(inputs):
        pixels = to_uint8(image[None])[0]
        path = folder / f"val_{index + 1}.png"
        Image.fromarray(pixels[..., 0] if translator.in_channels == 1 else pixels).save(path)
        paths.append(path)
    return paths


def build_page(source: str, device: str, examples_folder: Path):
    """The gradio page for ``source`` (anything ``i2i.load`` takes), not yet launched; the val
    examples are written into ``examples_folder``."""
    gr = _gradio()
    translators = {"eval": load(source, device=device, mode="eval")}
    first = translators["eval"]
    recipe = first.recipe

    def translate(image: Image.Image | None, mode: str):
        if image is None:
            raise gr.Error("Drop an image first.")
        try:
            if mode not in translators:
                translators[mode] = load(source, device=device, mode=mode)
            start = time.perf_counter()
            output = translators[mode](image)
            seconds = time.perf_counter() - start
        except I2IError as error:
            raise gr.Error(str(error)) from None
        return output, f"{image.width}x{image.height} pixels, {mode} mode: {seconds:.2f} s"

    image_mode = "L" if first.in_channels == 1 else "RGB"
    with gr.Blocks(title=f"i2i: {recipe.name}", analytics_enabled=False) as page:
        gr.Markdown(f"## {recipe.name}\n{recipe.description}\n\n`{source}`: generator `{recipe.model.generator.name}`, "
                    f"{first.in_channels} -> {first.out_channels} channels, direction {recipe.data.direction}")
        with gr.Row():
            source_image = gr.Image(type="pil", image_mode=image_mode, format="png", label="input", height=IMAGE_HEIGHT,
                                    sources=["upload", "clipboard"], elem_id="input")
            output_image = gr.Image(type="pil", format="png", label="output", height=IMAGE_HEIGHT, interactive=False,
                                    elem_id="output")
        with gr.Row():
            mode = gr.Radio(list(MODES), value="eval", label="generator mode",
                            info="eval: running BatchNorm statistics, no dropout, the same every time; "
                                 "train: batch statistics and dropout, as the pix2pix reference tests")
            button = gr.Button("Translate", variant="primary")
        timing = gr.Markdown(elem_id="timing")
        found = val_examples(first, examples_folder)
        if found:
            gr.Examples([[str(path)] for path in found], inputs=source_image, label="val inputs")
        button.click(translate, [source_image, mode], [output_image, timing])
    return page


def serve(source: str, host: str = "127.0.0.1", port: int | None = None, device: str = "auto",
          on_ready: Callable[[str], None] = print) -> None:
    """Build the page, launch it, hand its URL to ``on_ready`` and serve until Ctrl+C."""
    gr = _gradio()
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    with tempfile.TemporaryDirectory(prefix="i2i-demo-") as examples:
        page = build_page(source, device, Path(examples))
        _, url, _ = page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                                ssr_mode=False, mcp_server=False, pwa=False, theme=theme, allowed_paths=[examples])
        on_ready(url)
        try:
            page.block_thread()
        finally:
            page.close(verbose=False)
