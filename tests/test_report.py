"""report.html of a run directory, and the TensorBoard events beside it."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from i2i.report import ReportError, build_report, read_log, sample_grids


class References(HTMLParser):
    """Every src/href of a page, and the text of its table cells."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href")]
        self._in_cell = tag == "td"

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)
            self._in_cell = False


def references(page: Path) -> References:
    parser = References()
    parser.feed(page.read_text())
    return parser


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_report_references_existing_samples_and_plots(tiny_run):
    page = tiny_run / "report.html"
    refs = references(page)
    assert refs.links, "the report shows images"
    for link in refs.links:
        assert not Path(link).is_absolute() and "://" not in link, f"{link} is not a relative path"
        assert (tiny_run / link).is_file(), f"report.html references missing {link}"
    assert {"samples/step_00000004.png", "samples/step_00000002.png", "plots/losses.png"} <= set(refs.links)
    text = page.read_text()
    assert "torch" in refs.cells and "device" in refs.cells
    for loss in ("G_GAN", "G_l1", "D_real", "D_fake"):
        assert loss in refs.cells, f"{loss} missing from the latest values table"
    assert "name: tiny" in text, "the recipe is shown"


def test_metric_records_get_their_own_plot_and_table_rows(run_copy):
    with open(run_copy / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": 2, "epoch": 0, "eval_images": 8, "eval_fid": 210.5, "eval_ssim": 0.31}) + "\n")
        log.write(json.dumps({"step": 4, "epoch": 0, "eval_images": 8, "eval_fid": 180.25, "eval_ssim": 0.42}) + "\n")
    refs = references(build_report(run_copy))
    assert "plots/metrics.png" in refs.links and (run_copy / "plots" / "metrics.png").is_file()
    cells = refs.cells
    assert cells[cells.index("eval_fid") + 1] == "180.2" and cells[cells.index("eval_ssim") + 1] == "0.42"
    assert "eval_images" not in cells


def test_rebuild_from_files_alone_after_a_copy(run_copy):
    (run_copy / "report.html").unlink()
    shutil.rmtree(run_copy / "plots")
    refs = references(build_report(run_copy))
    assert all((run_copy / link).is_file() for link in refs.links)
    assert "steps/s (median of log intervals)" in refs.cells


def test_sample_history_is_spread_over_the_run(tmp_path):
    (tmp_path / "samples").mkdir()
    for step in range(100, 5001, 100):
        (tmp_path / "samples" / f"step_{step:08d}.png").touch()
    steps = [step for step, _ in sample_grids(tmp_path, history=5)]
    assert steps == [5000, 4900, 3700, 2500, 1300, 100]


def test_half_written_last_line_is_ignored_and_a_broken_middle_line_is_noted(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "G_GAN": 1.0}\n{"step": 2, "G_')
    skipped: list[str] = []
    assert read_log(tmp_path, skipped) == [{"step": 1, "G_GAN": 1.0}] and skipped == []
    (tmp_path / "log.jsonl").write_text('{"step": 1\n{"step": 2, "G_GAN": 1.0}\n')
    assert read_log(tmp_path, skipped) == [{"step": 2, "G_GAN": 1.0}]
    assert skipped == [f"{tmp_path / 'log.jsonl'}:1: not a JSON record"]


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(ReportError, match="not a run directory"):
        build_report(tmp_path)


def test_tensorboard_has_losses_and_sample_images(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"loss/G_GAN", "loss/G_l1", "loss/D_real", "loss/D_fake", "train/lr"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/G_l1")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("samples/input|generated|target")] == [2, 4]


def test_the_run_folder_says_which_engine_settings_the_run_used(tiny_run):
    environment = json.loads((tiny_run / "environment.json").read_text())
    source, settings = environment["engine"].split(": ")
    assert source in {"reference", "recipe", "measured", "cached", "static"}
    assert {setting.split(" ")[0] for setting in settings.split(", ")} >= {"precision", "channels_last", "fused_adam"}
