"""Image quality metrics on the pinned protocol: uint8 images in, FID, KID, SSIM, PSNR out.

Every image is quantized to uint8 first (what a saved PNG holds), so a metric
never sees detail that translating to a file would throw away. SSIM and PSNR
compare each generated image with its ground truth on the 0..255 scale and are
averaged over images; FID and KID compare the two sets of InceptionV3 pool
features, computed once per image and shared by both metrics. FID needs at
least two images on each side.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.kid import KernelInceptionDistance

from i2i.visual import quantize

PSNR_CAP_DB = 100.0
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100


def psnr_per_image(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW pairs -> (N,) PSNR in dB on the 0..255 scale; identical images give the cap."""
    values = peak_signal_noise_ratio(
        fake.double(), real.double(), data_range=255.0, reduction="none", dim=(1, 2, 3)
    )
    return values.nan_to_num(posinf=PSNR_CAP_DB).clamp(max=PSNR_CAP_DB).float()


def ssim_per_image(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW pairs -> (N,) SSIM (Gaussian window 11, sigma 1.5, data range 255)."""
    return structural_similarity_index_measure(fake.double(), real.double(), data_range=255.0, reduction="none").float()


class PrecomputedFeatures(nn.Module):
    """Hands features already computed to torchmetrics' KID as its 'network'."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, D), the quantity torchmetrics' FrechetInceptionDistance
    computes, without its D x D eigendecomposition (a minute on two CPU cores for D = 2048).

    With A = centred features / sqrt(n - 1), each covariance is A^T A, and the nonzero
    eigenvalues of S_real S_fake are the squared singular values of A_real A_fake^T, so
    Tr sqrt(S_real S_fake) is that (n_real x n_fake) matrix's nuclear norm."""
    real, fake = real.double(), fake.double()
    a_real = (real - real.mean(0)) / (len(real) - 1) ** 0.5
    a_fake = (fake - fake.mean(0)) / (len(fake) - 1) ** 0.5
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    trace_term = a_real.square().sum() + a_fake.square().sum()
    cross_term = torch.linalg.svdvals(a_real @ a_fake.T).sum()
    return float(mean_term + trace_term - 2 * cross_term)


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """KID mean and std over random subsets (seeded: the subsets are drawn from torch's RNG)."""
    size = min(KID_SUBSET_SIZE, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")  # features are already held
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subset_size=size, subsets=KID_SUBSETS)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


class QualityMeter:
    """Collects generated/ground-truth batches; ``compute()`` gives every metric.

    ``extractor`` maps uint8 NCHW RGB images to (N, D) features (the FID Inception,
    or anything cheaper in tests); ``None`` skips FID and KID."""

    def __init__(self, extractor: nn.Module | None = None):
        self.extractor = extractor
        self.ssim: list[torch.Tensor] = []
        self.psnr: list[torch.Tensor] = []
        self.real_features: list[torch.Tensor] = []
        self.fake_features: list[torch.Tensor] = []

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        device = next(self.extractor.parameters(), torch.empty(0)).device
        return self.extractor(images.to(device)).float().cpu()

    def update(self, fake: torch.Tensor, real: torch.Tensor, real_features: torch.Tensor | None = None) -> None:
        """``fake``/``real``: [-1, 1] float NCHW. ``real_features`` skips extracting them again."""
        fake, real = quantize(fake).cpu(), quantize(real).cpu()
        self.ssim.append(ssim_per_image(fake, real))
        self.psnr.append(psnr_per_image(fake, real))
        if self.extractor is not None:
            self.fake_features.append(self.features(fake))
            self.real_features.append(self.features(real) if real_features is None else real_features)

    def update_unpaired(self, fake: torch.Tensor | None = None, real: torch.Tensor | None = None) -> None:
        """A generated or a real image of two sets without pairs: FID and KID only. Both
        [-1, 1] float NCHW, either may be left out."""
        if fake is not None:
            self.fake_features.append(self.features(quantize(fake).cpu()))
        if real is not None:
            self.real_features.append(self.features(quantize(real).cpu()))

    def real_features_all(self) -> torch.Tensor | None:
        return torch.cat(self.real_features) if self.real_features else None

    def per_image(self) -> dict[str, torch.Tensor]:
        """The values ``compute()`` reduces, one row per image: the generated images' pool
        features (``fake``), the real ones' (``real``) and, where pairs were given, SSIM and PSNR."""
        found = {"fake": torch.cat(self.fake_features), "real": self.real_features_all()}
        if self.ssim:
            found.update(ssim=torch.cat(self.ssim), psnr=torch.cat(self.psnr))
        return found

    def compute(self) -> dict[str, float]:
        """``images``, FID, KID and, where pairs were given, SSIM and PSNR; unpaired sets also
        give ``real_images`` (their sizes may differ)."""
        fakes, reals = sum(map(len, self.fake_features)), sum(map(len, self.real_features))
        if self.ssim:
            ssim, psnr = torch.cat(self.ssim), torch.cat(self.psnr)
            result = {"images": len(ssim), "ssim": float(ssim.mean()), "psnr": float(psnr.mean())}
        else:
            result = {"images": fakes, "real_images": reals}
        if self.extractor is not None and min(fakes, reals) >= 2:
            real, fake = self.real_features_all(), torch.cat(self.fake_features)
            kid_mean, kid_std = kernel_distance(real, fake)
            result.update(fid=frechet_distance(real, fake), kid=kid_mean, kid_std=kid_std)
        return result
