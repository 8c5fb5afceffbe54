"""Several processes, one run: DistributedDataParallel over NCCL (GPU) or gloo (CPU).

``torchrun --nproc-per-node N -m i2i run RECIPE`` starts the processes itself;
``i2i run --nproc N RECIPE`` calls torchrun for you. Each process reads its
rank from torchrun's environment, takes its shard of every epoch
(``EpochSampler``) and averages gradients with the others; rank 0 alone writes
logs, samples and checkpoints.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from i2i.errors import I2IError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_torchrun() -> None:
    """Join the process group torchrun describes in the environment (once)."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))


def local_rank() -> int:
    """This process's rank on its node (torchrun's LOCAL_RANK; 0 alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave(finished: bool = True) -> None:
    """Close the process group, if this process joined one. ``finished``: every rank got to the
    end, so they wait for each other first and none closes its connections while a peer is
    still in its last collective (after a failure a peer may never arrive). The objects that
    hold the group (DDP's reducers, in a trainer's reference cycles) are collected before it is
    destroyed: a gloo group left to the interpreter's exit has aborted a rank (SIGABRT,
    "terminate called without an active exception", once in a CI run of the two-process tests)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all processes, in place (unchanged in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP over ``module``: averages its gradients across processes in each backward."""
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def torchrun_command(nproc: int, cli_args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m i2i <cli_args>`` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "i2i", *cli_args]


# What one rank takes besides its networks' state: torch itself, the data and a batch's
# activations. A rough allowance, to refuse a process count no machine of this size holds.
PROCESS_BYTES = 1 << 30
STATE_BYTES_PER_PARAMETER = 16  # fp32 weights, their gradients and Adam's two moments


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo, in bytes (None where the system does not say)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_count_problem(nproc: int, device: torch.device, parameters: int) -> str | None:
    """Why this machine cannot hold ``nproc`` ranks training ``parameters`` parameters on ``device``
    (more ranks than GPUs, or CPU cores, or memory), or None."""
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            return f"--nproc {nproc} is more than the {gpus} GPU(s) here (one process per GPU)"
    else:
        cores = len(os.sched_getaffinity(0))
        if nproc > cores:
            return f"--nproc {nproc} is more than the {cores} CPU core(s) this process may use"
    per_process = PROCESS_BYTES + STATE_BYTES_PER_PARAMETER * parameters
    memory = available_memory()
    if memory is not None and nproc * per_process > memory:
        return (f"--nproc {nproc} needs about {nproc * per_process / 2**30:.1f} GiB of memory ({per_process / 2**30:.1f} GiB "
                f"a process), more than the {memory / 2**30:.1f} GiB available")
    return None


def launch(nproc: int, cli_args: list[str]) -> None:
    """Run ``i2i <cli_args>`` in ``nproc`` processes under torchrun and wait for them."""
    if nproc < 2:
        raise I2IError(f"--nproc {nproc}: give 2 or more processes (1 trains in this process)")
    result = subprocess.run(torchrun_command(nproc, cli_args))
    if result.returncode:
        raise I2IError(f"distributed run failed: torchrun exited with status {result.returncode} (see the ranks' output above)")


def without_option(args: list[str], option: str) -> list[str]:
    """``args`` less ``option VALUE`` / ``option=VALUE`` (what the ranks must not see again)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every process."""
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def host_group() -> Any:
    """A group over every process whose collectives run on the host (gloo): for a small decision
    taken at each step, which over NCCL would wait for the device's queue of work."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def main_says(flag: bool, group: Any) -> bool:
    """Rank 0's ``flag`` on every process (a collective of ``group``, from ``host_group``)."""
    holder = torch.tensor([int(flag)])
    dist.broadcast(holder, src=0, group=group)
    return bool(holder.item())


def broadcast_weights(*modules: nn.Module) -> None:
    """Rank 0's parameters and buffers into every process's copy of ``modules``, in place."""
    for module in modules:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)
