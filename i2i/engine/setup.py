"""Everything a training run needs before its first step, built from the recipe.

``Trainer.__init__`` calls these in order; the order is part of the contract (the
networks' initial weights come from the seeded RNG, so they must be built in the
same order every time for a run to be reproducible).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from i2i.contracts import Method, PairedDataset
from i2i.data.device import device_batches
from i2i.engine.compiled import CompiledOrEager
from i2i.engine.cpu_speedups import keep_freed_memory, use_dense_batchnorm_gradients, use_matmul_convolutions
from i2i.engine.distributed import wrap_ddp
from i2i.engine.schedule import EpochSampler
from i2i.errors import I2IError
from i2i.recipe import Recipe


def build_networks(
    method: Method, channels: tuple[int, int], recipe: Recipe, device: torch.device,
    memory_format: torch.memory_format, world_size: int,
) -> dict[str, nn.Module]:
    """The method's networks on ``device``, with the CPU rewrites and SyncBatchNorm that the
    recipe asks for."""
    cfg = recipe.train
    networks = {name: network.to(device) for name, network in method.build_networks(*channels).items()}
    for network in networks.values():
        network.to(memory_format=memory_format)
    if cfg.cpu_speedups and device.type == "cpu":
        use_cpu_speedups(recipe, method.input_channels, networks, memory_format)
    if cfg.sync_batchnorm and world_size > 1:
        if device.type != "cuda":
            raise I2IError("train.sync_batchnorm needs CUDA (torch's SyncBatchNorm runs on GPUs); "
                           "on CPU train with norm 'none' or 'instance' instead")
        networks = {name: nn.SyncBatchNorm.convert_sync_batchnorm(network) for name, network in networks.items()}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one crop size all run long: pick the fastest kernels once
    return networks


def use_cpu_speedups(
    recipe: Recipe, input_channels: dict[str, int], networks: dict[str, nn.Module], memory_format: torch.memory_format
) -> None:
    """The CPU rewrites of ``train.cpu_speedups`` (same math), sized on this run's crops,
    and the allocator setting (for the whole process)."""
    keep_freed_memory()
    size, batch = recipe.data.crop_size, recipe.train.batch_size
    for name, network in networks.items():
        if name in input_channels:
            example = torch.zeros(batch, input_channels[name], size, size).contiguous(memory_format=memory_format)
            use_matmul_convolutions(network, example)
        use_dense_batchnorm_gradients(network)


def side_parameters(networks: dict[str, nn.Module], names: tuple[str, ...]) -> list[nn.Parameter]:
    return [p for name in names for p in networks[name].parameters()]


def build_optimizers(
    recipe: Recipe, method: Method, networks: dict[str, nn.Module], device: torch.device, amp_dtype: torch.dtype
) -> tuple[torch.optim.Adam, torch.optim.Adam, torch.amp.GradScaler]:
    """One Adam over the method's generator side, one over its discriminator side (as the
    reference chains CycleGAN's two generators into one optimizer), at ``train.lr`` and
    ``train.lr x train.d_lr_ratio``."""
    cfg = recipe.train
    implementation = {"fused": True} if cfg.fused_adam else {"foreach": True}
    if cfg.cuda_graph:  # a captured step reads the learning rate from a tensor, updated in place
        implementation["capturable"] = True
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    optimizers = [
        torch.optim.Adam(side_parameters(networks, side), lr=torch.tensor(lr, device=device) if cfg.cuda_graph else lr,
                         betas=cfg.betas, **implementation)
        for side, lr in ((method.generator_side, cfg.lr), (method.discriminator_side, cfg.lr * cfg.d_lr_ratio))
    ]
    return *optimizers, scaler


def wrap_for_step(
    module: nn.Module, name: str, recipe: Recipe, device: torch.device, world_size: int,
    log_line: Callable[[str], None], ddp: bool = True,
) -> Callable[..., torch.Tensor]:
    """What the training step calls: the module, under DDP with several processes, compiled if asked."""
    if ddp and world_size > 1:
        module = wrap_ddp(module, device)
    if recipe.train.compile:
        return CompiledOrEager(module, recipe.train.compile_mode, name, log_line)
    return module


class EpochIndexed(Dataset):
    """``dataset`` read by (epoch, index) keys: a persistent worker's copy of it follows the
    epoch in each key, so a sample stays a function of (seed, epoch, index) while the worker
    lives across epochs."""

    def __init__(self, dataset: PairedDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class EpochKeys(Sampler[tuple[int, int]]):
    """The sampler's order as (epoch, index) keys for ``EpochIndexed``; the epoch is read at
    each ``iter``, after the trainer's ``set_epoch``."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class TrainingBatches:
    """Each epoch's training batches, in the sampler's order (set its epoch first). One
    DataLoader serves every epoch: its workers persist, so an epoch boundary costs no worker
    restart (on CUDA the graphed step outruns a restarting loader, docs/engine.md)."""

    def __init__(self, recipe: Recipe, dataset: PairedDataset, sampler: EpochSampler, device: torch.device):
        self.recipe, self.dataset, self.sampler, self.device = recipe, dataset, sampler, device
        workers = recipe.data.num_workers
        self.loader = None if recipe.data.on_device else DataLoader(
            EpochIndexed(dataset),
            batch_size=recipe.train.batch_size,
            sampler=EpochKeys(sampler),
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            # Its own generator: drawing worker seeds from the global RNG would shift
            # the dropout stream whenever a resumed run opens a loader mid-epoch.
            generator=torch.Generator().manual_seed(recipe.train.seed),
        )

    def epoch(self) -> Iterable[dict[str, Any]]:
        if self.loader is None:
            return device_batches(self.dataset, self.sampler, self.recipe.train.batch_size, self.device)
        return self.loader
