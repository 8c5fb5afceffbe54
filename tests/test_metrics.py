"""Quality metrics: hand-computed PSNR/SSIM, FID against torchmetrics, and the converted
FID Inception against the TorchScript it comes from."""

import hashlib
import math

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from i2i.bench.inception import converted_weights, inception_extractor, load_torchscript
from i2i.bench.metrics import (
    PSNR_CAP_DB,
    PrecomputedFeatures,
    QualityMeter,
    frechet_distance,
    psnr_per_image,
    ssim_per_image,
)
from i2i.visual import quantize

SSIM_C1 = (0.01 * 255) ** 2


def constant(value: int, size: int = 16) -> torch.Tensor:
    return torch.full((1, 3, size, size), value, dtype=torch.uint8)


def test_quantize_rounds_to_the_uint8_a_saved_image_holds():
    values = torch.tensor([-1.5, -1.0, 0.0, 1 / 127.5 - 1, 1.0, 2.0]).view(1, 1, 1, -1)
    assert quantize(values).flatten().tolist() == [0, 0, 128, 1, 255, 255]


def test_psnr_identical_is_capped_and_small_case_matches_hand_computation():
    assert psnr_per_image(constant(7), constant(7)).item() == PSNR_CAP_DB
    # Every pixel off by 20 levels: MSE = 400.
    assert psnr_per_image(constant(100), constant(120)).item() == pytest.approx(10 * math.log10(255**2 / 400), abs=1e-4)
    # One pixel of 16 off by 255 on one channel of 3: MSE = 255^2 / 48.
    fake = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    real = fake.clone()
    real[0, 1, 2, 3] = 255
    assert psnr_per_image(fake, real).item() == pytest.approx(10 * math.log10(48), abs=1e-4)


def test_ssim_identical_is_one_and_constant_images_match_the_luminance_formula():
    image = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert ssim_per_image(image, image).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    # Flat images have no variance, so SSIM is its luminance term (2ab + C1) / (a^2 + b^2 + C1).
    expected = (2 * 100 * 120 + SSIM_C1) / (100**2 + 120**2 + SSIM_C1)
    assert ssim_per_image(constant(100), constant(120)).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("n_real,n_fake,dim", [(10, 12, 64), (40, 30, 8)])
def test_frechet_distance_equals_torchmetrics(n_real, n_fake, dim):
    generator = torch.Generator().manual_seed(n_real)
    real = torch.randn(n_real, dim, generator=generator, dtype=torch.float64)
    fake = 1.3 * torch.randn(n_fake, dim, generator=generator, dtype=torch.float64) + 0.2
    reference = FrechetInceptionDistance(feature=PrecomputedFeatures(dim))
    reference.set_dtype(torch.float64)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(reference.compute()), rel=1e-6)
    assert abs(frechet_distance(real, real)) < 1e-8


@pytest.fixture(scope="module")
def inception():
    return inception_extractor("cpu")


def test_converted_inception_matches_the_torchscript(inception):
    images = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        converted = inception(images)
        packaged = load_torchscript()((images.float() - 128) / 128).reshape(1, -1)
    assert converted.shape == (1, 2048)
    assert (converted - packaged).abs().max().item() < 1e-4


def test_converted_file_is_cached_with_its_sha256(inception):
    path = converted_weights()
    digest = path.with_name(path.name + ".sha256").read_text().strip()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_fid_of_a_set_with_itself_is_zero_and_with_noise_is_large(inception):
    generator = torch.Generator().manual_seed(2)
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 4, 4, generator=generator), size=48, mode="bilinear")
    photos, noise = smooth * 2 - 1, torch.rand(3, 3, 48, 48, generator=generator) * 2 - 1
    with torch.no_grad():
        photo_features = inception(quantize(photos))
    same, against_noise = QualityMeter(inception), QualityMeter(inception)
    same.update(photos, photos, real_features=photo_features)
    against_noise.update(noise, photos, real_features=photo_features)
    itself, noisy = same.compute(), against_noise.compute()
    assert abs(itself["fid"]) < 1e-3 and itself["ssim"] == pytest.approx(1.0) and itself["psnr"] == PSNR_CAP_DB
    assert noisy["fid"] > 100 and noisy["kid"] > 0.05 and noisy["ssim"] < 0.2
