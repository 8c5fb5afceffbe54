"""benchmarks/gpu_record.py's reading of the long run that gpu_check.sh stops with SIGTERM."""

import importlib.util
import json
import sys

from conftest import ROOT


def gpu_record():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its neighbour quality_check
    try:
        spec = importlib.util.spec_from_file_location("gpu_record", ROOT / "benchmarks" / "gpu_record.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_long_run_counts_the_last_checkpoint_and_passes_over_a_half_written_line(tmp_path):
    (tmp_path / "checkpoints" / "step_300").mkdir(parents=True)
    records = [{"step": 100, "steps_per_s": 10.0}, {"step": 200, "steps_per_s": 5.0}, {"step": 200, "time_budget": {}}]
    lines = [json.dumps(record) for record in records] + ['{"step": 300, "steps_p']  # killed while writing
    (tmp_path / "log.jsonl").write_text("\n".join(lines))
    summary = gpu_record().long_run(tmp_path)
    assert summary["long_run_steps"] == 300  # the checkpoint went further than the last whole record
    assert summary["long_run_steps_per_s"] == round(200 / (100 / 10.0 + 100 / 5.0), 2)


def test_long_run_without_a_log_has_no_figures(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert gpu_record().long_run(tmp_path) == {"long_run_steps": None, "long_run_steps_per_s": None,
                                               "long_run_steady_min_over_median": None}
