"""``i2i bench speed``'s limit: the matmul peak, the counted work, and compare on their fraction."""

import json

import torch
from torch import nn

from i2i.bench.compare import compare_results
from i2i.bench.limit import achieved, counted_gflop, matmul_peak
from i2i.engine.build import build_generator
from i2i.recipe import Recipe

from conftest import tiny_recipe


def test_matmul_peak_times_every_size_and_keeps_the_best_median():
    peak = matmul_peak(torch.device("cpu"), sizes=(32, 64), repeats=2)
    assert {"fp32_32", "fp32_64"} <= set(peak["gflop_per_s"])
    for rate in peak["gflop_per_s"].values():
        assert rate["median"] > 0 and len(rate["runs"]) == 2
    assert peak["best_gflop_per_s"] == max(rate["median"] for rate in peak["gflop_per_s"].values())
    assert peak["gflop_per_s"][peak["best"]]["median"] == peak["best_gflop_per_s"]
    assert peak["threads"] == torch.get_num_threads()


def test_a_convolution_counts_two_flops_per_multiply_add():
    conv = nn.Conv2d(3, 8, kernel_size=4, stride=2, padding=1)
    image = torch.zeros(2, 3, 32, 32)
    multiply_adds = 2 * 16 * 16 * 8 * 3 * 4 * 4  # batch, output positions, output and input channels, kernel
    assert counted_gflop(lambda: conv(image)) * 1e9 == 2 * multiply_adds


def test_a_tiny_unet_counts_the_sum_of_its_convolutions():
    recipe = Recipe.from_dict(tiny_recipe())
    generator = build_generator(recipe, 3, 3)
    expected = []

    def analytic(layer, inputs, output):
        # a convolution multiplies each weight once per output position; a transposed one, per input position
        positions = output if isinstance(layer, nn.Conv2d) else inputs[0]
        expected.append(2 * layer.weight.numel() * positions.shape[0] * positions.shape[2] * positions.shape[3])

    for layer in generator.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            layer.register_forward_hook(analytic)
    image = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        counted = counted_gflop(lambda: generator(image))
    assert len(expected) > 2 and counted * 1e9 == sum(expected)


def test_achieved_is_the_work_times_the_rate_over_the_peak():
    assert achieved(93.3, 2.0, 400.0) == {"gflop_per_s": 186.6, "fraction_of_peak": 186.6 / 400.0}


def speed_record(train_fraction: float, infer_fraction: float) -> dict:
    def config(inference: bool) -> dict:
        found = {"settings": {}, "train_steps_per_s": {"median": 2.0}, "train_fraction_of_peak": train_fraction,
                 "train_fraction_of_bound": train_fraction}
        if inference:
            found |= {"inference_images_per_s": {"eval_batch1": {"median": 30.0}},
                      "inference_fraction_of_peak": {"eval_batch1": infer_fraction},
                      "inference_fraction_of_bound": {"eval_batch1": infer_fraction}}
        return found

    return {"kind": "speed", "recipe": "tiny", "device_name": "cpu", "threads": 2,
            "configs": {"baseline": config(True), "tuned": config(True), "default": config(False)}}


def write_records(folder, *records: dict) -> None:
    (folder / "speed.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def test_compare_flags_a_drop_of_the_fractions_of_peak_and_bound_at_the_same_rates(tmp_path):
    write_records(tmp_path, speed_record(0.6, 0.9), speed_record(0.5, 0.6))
    flagged = sorted(c.figure for c in compare_results(tmp_path) if c.is_regression(0.1))
    assert flagged == sorted(f"{name} {figure} fraction of {limit}" for limit in ("peak", "bound")
                             for name, figure in [("baseline", "inference eval_batch1"), ("baseline", "train"),
                                                  ("default", "train"), ("tuned", "inference eval_batch1"),
                                                  ("tuned", "train")])


def test_compare_reads_speed_records_from_before_the_peak(tmp_path):
    older = speed_record(0.6, 0.9)
    for config in older["configs"].values():
        for key in ("train_fraction_of_peak", "inference_fraction_of_peak", "train_fraction_of_bound",
                    "inference_fraction_of_bound"):
            config.pop(key, None)
    write_records(tmp_path, older, speed_record(0.1, 0.1))
    compared = {c.figure for c in compare_results(tmp_path)}
    assert "tuned train steps/s" in compared and not any("fraction" in figure for figure in compared)
