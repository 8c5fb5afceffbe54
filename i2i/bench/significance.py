"""Is a difference between two quality results beyond their noise?

Two checks, each against a noise of its own, both of side B against side A:

- **across seeds**: where each side holds the figures of two or more training seeds, the gap
  between the two means against the seed-to-seed spread (max - min): beyond the noise when the
  gap is more than twice the larger spread (the rule of docs/bench.md). The noise of training.
- **over images** (paired bootstrap): where both sides hold per-image values of the same images
  (what ``i2i bench quality`` writes beside its results, ``per_image``), image indices are drawn
  with replacement, every metric of both sides is computed again on that same draw, and the 95%
  interval of the difference is read off the draws: beyond the noise when it leaves out 0. The
  noise of which images were scored, not of training. FID and KID are computed on each draw from
  the Gram matrices of the features, weighted by how often each image was drawn, so a draw costs
  an SVD of (distinct images)^2 rather than a pass over the features. On the full set they are
  the record's FID and KID (KID as one subset of every image, which is what the record's 100
  subsets are for paired sets of up to 1000 images).

A verdict: ``better`` / ``worse`` (B against A; lower FID and KID, higher SSIM and PSNR are better),
or ``within noise`` when any check that could be made finds the difference inside its noise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from i2i.errors import I2IError

LOWER_IS_BETTER = {"fid", "kid"}
SEED_RULE = 2.0  # a gap must exceed this many seed spreads
CONFIDENCE = 0.95


class PerImageError(I2IError):
    pass


@dataclass
class PerImage:
    """One record's per-image values: pool features of its translated images (``fake``) and of
    the real ones they are compared with, and, where the set has pairs, SSIM and PSNR per image."""

    fake: torch.Tensor
    real: torch.Tensor
    ssim: torch.Tensor | None = None
    psnr: torch.Tensor | None = None
    grams: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, fake_file: Path, real_file: Path) -> PerImage:
        try:
            with np.load(fake_file, allow_pickle=False) as fake, np.load(real_file, allow_pickle=False) as real:
                values = {key: torch.from_numpy(fake[key]).double() for key in fake.files}
                return cls(values.pop("features"), torch.from_numpy(real["features"]).double(), **values)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PerImageError(f"cannot read the per-image values {fake_file} / {real_file}: {error}") from None

    @property
    def paired(self) -> bool:
        return self.ssim is not None

    def gram(self, name: str) -> torch.Tensor:
        """rr, rf or ff: the feature dot products, computed once."""
        if name not in self.grams:
            sides = {"r": self.real, "f": self.fake}
            self.grams[name] = sides[name[0]] @ sides[name[1]].T
        return self.grams[name]

    def kernel(self, name: str) -> torch.Tensor:
        """KID's polynomial kernel (x . y / dims + 1)^3 on the rr, rf or ff pairs, computed once."""
        if f"k{name}" not in self.grams:
            self.grams[f"k{name}"] = (self.gram(name) / self.real.shape[1] + 1) ** 3
        return self.grams[f"k{name}"]

    def metrics(self, real_weights: torch.Tensor, fake_weights: torch.Tensor) -> dict[str, float]:
        """Every metric with image i counted ``weights[i]`` times (all ones: the record's own figures)."""
        found = {"fid": weighted_fid(self, real_weights, fake_weights), "kid": weighted_kid(self, real_weights, fake_weights)}
        if self.paired:
            found["ssim"] = float(self.ssim @ fake_weights / fake_weights.sum())
            found["psnr"] = float(self.psnr @ fake_weights / fake_weights.sum())
        return found


def weighted_fid(values: PerImage, w_r: torch.Tensor, w_f: torch.Tensor) -> float:
    """``frechet_distance`` of the real and fake features with each row repeated its weight's
    times, from the Gram matrices: Tr sqrt(S_r S_f) is the nuclear norm of the centred cross
    products, scaled by the square roots of the weights (a row drawn k times is k equal rows)."""
    rr, rf, ff = values.gram("rr"), values.gram("rf"), values.gram("ff")
    n_r, n_f = float(w_r.sum()), float(w_f.sum())
    real_dot_mean_f = rf @ w_f / n_f  # x_i . mu_f
    mean_r_dot_fake = w_r @ rf / n_r  # mu_r . y_j
    means_dot = float(w_r @ real_dot_mean_f) / n_r
    mean_r_sq = float(w_r @ rr @ w_r) / n_r**2
    mean_f_sq = float(w_f @ ff @ w_f) / n_f**2
    trace_r = (float(w_r @ rr.diagonal()) - n_r * mean_r_sq) / (n_r - 1)
    trace_f = (float(w_f @ ff.diagonal()) - n_f * mean_f_sq) / (n_f - 1)
    centred = rf - real_dot_mean_f[:, None] - mean_r_dot_fake[None, :] + means_dot
    scaled = w_r.sqrt()[:, None] * centred * w_f.sqrt()[None, :]
    cross = torch.linalg.svdvals(scaled[w_r > 0][:, w_f > 0]).sum() / math.sqrt((n_r - 1) * (n_f - 1))
    return mean_r_sq + mean_f_sq - 2 * means_dot + trace_r + trace_f - 2 * float(cross)


def weighted_kid(values: PerImage, w_r: torch.Tensor, w_f: torch.Tensor) -> float:
    """The unbiased MMD^2 of torchmetrics' KID (polynomial kernel of degree 3) over the whole
    weighted sets: pairs of distinct draws, a drawn image paired with its own copy included."""
    kernel = {name: values.kernel(name) for name in ("rr", "rf", "ff")}
    n_r, n_f = float(w_r.sum()), float(w_f.sum())
    xx = (float(w_r @ kernel["rr"] @ w_r) - float(w_r @ kernel["rr"].diagonal())) / (n_r * (n_r - 1))
    yy = (float(w_f @ kernel["ff"] @ w_f) - float(w_f @ kernel["ff"].diagonal())) / (n_f * (n_f - 1))
    xy = float(w_r @ kernel["rf"] @ w_f) / (n_r * n_f)
    return xx + yy - 2 * xy


@dataclass(frozen=True)
class Check:
    """One check of the difference (B - A) of one metric: ``beyond`` its noise or not."""

    name: str
    difference: float
    noise: str  # what the difference was held against, in words
    beyond: bool


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def seed_check(a: list[float], b: list[float]) -> Check | None:
    """The gap of the means against twice the larger seed spread; None without two seeds a side."""
    if min(len(a), len(b)) < 2:
        return None
    gap = statistics.mean(b) - statistics.mean(a)
    spread = max(max(a) - min(a), max(b) - min(b))
    return Check("seeds", gap, f"{SEED_RULE:g} x seed spread {spread:.4g} ({len(a)} and {len(b)} seeds)",
                 abs(gap) > SEED_RULE * spread)


def bootstrap_checks(a: list[PerImage], b: list[PerImage], resamples: int, seed: int = 0) -> dict[str, Check]:
    """Per metric, the paired bootstrap of mean(B) - mean(A) over the images every record scored
    (each side: one record per seed, averaged on each draw)."""
    records = a + b
    sizes = {(len(r.real), len(r.fake), r.paired) for r in records}
    if len(sizes) != 1:
        raise PerImageError(f"the records scored different numbers of images: (real, generated, paired) {sorted(sizes)}")
    (n_r, n_f, paired), = sizes
    generator = torch.Generator().manual_seed(seed)
    ones_r, ones_f = torch.ones(n_r, dtype=torch.float64), torch.ones(n_f, dtype=torch.float64)
    # Matrices of a few hundred rows: a second thread only adds synchronisation (a busy 2-core
    # AMD EPYC: 37 ms a draw of two records of 400 images on one thread, 1 s on two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        observed = side_difference(a, b, ones_r, ones_f)
        draws: dict[str, list[float]] = {metric: [] for metric in observed}
        for _ in range(resamples):
            w_f = torch.bincount(torch.randint(n_f, (n_f,), generator=generator), minlength=n_f).double()
            w_r = w_f if paired else torch.bincount(torch.randint(n_r, (n_r,), generator=generator), minlength=n_r).double()
            for metric, difference in side_difference(a, b, w_r, w_f).items():
                draws[metric].append(difference)
    finally:
        torch.set_num_threads(threads)
    checks = {}
    for metric, values in draws.items():
        low, high = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
        checks[metric] = Check("images", observed[metric],
                               f"{CONFIDENCE:.0%} interval [{low:.4g}, {high:.4g}] ({resamples} resamples of {n_f} images)",
                               bool(low > 0 or high < 0))
    return checks


def side_difference(a: list[PerImage], b: list[PerImage], w_r: torch.Tensor, w_f: torch.Tensor) -> dict[str, float]:
    """mean over B's records - mean over A's, per metric, on one weighting of the images."""
    means = []
    for side in (a, b):
        figures = [record.metrics(w_r, w_f) for record in side]
        means.append({metric: sum(f[metric] for f in figures) / len(figures) for metric in figures[0]})
    return {metric: means[1][metric] - means[0][metric] for metric in means[0]}


def verdict(metric: str, checks: list[Check]) -> str:
    """better / worse (B against A) where every check finds the difference beyond its noise,
    within noise where one does not; no checks: no verdict."""
    if not checks:
        return "no noise measured"
    if not all(check.beyond for check in checks):
        return "within noise"
    signs = {check.difference > 0 for check in checks}
    if len(signs) != 1:
        return "within noise"
    return "better" if signs.pop() == higher_is_better(metric) else "worse"
