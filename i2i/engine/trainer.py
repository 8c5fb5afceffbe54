"""The pix2pix training loop.

``Trainer.train_step`` is the published step, top to bottom: generate, update D
on real and generated pairs (loss halved), update G on fooling D plus the
weighted reconstruction losses. Everything around it (data order, learning
rate schedule, logging, samples, checkpoints, resume) lives in the methods
below it.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from i2i import __version__
from i2i.data.device import device_batches
from i2i.engine.build import (
    build_dataset,
    build_discriminator,
    build_generator,
    build_losses,
    resolve_device,
    resolve_precision,
)
from i2i.engine.checkpoint import CheckpointError, latest_good_checkpoint, load_state, load_weights, save_checkpoint
from i2i.engine.compiled import CompiledOrEager
from i2i.engine.cpu_speedups import keep_freed_memory, use_dense_batchnorm_gradients, use_matmul_convolutions
from i2i.engine.distributed import barrier, rank_and_world_size, sum_over_ranks, wrap_ddp
from i2i.engine.faults import NonFiniteGuard, StopSignals, TrainingInterrupted, advise_on_out_of_memory
from i2i.engine.inference import generator_mode
from i2i.recipe import Recipe
from i2i.errors import I2IError


class EpochSampler(Sampler[int]):
    """A fresh permutation per epoch from (seed, epoch), sharded over ranks, able to
    start part-way through an epoch so that a resumed run sees the same order."""

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.length, self.seed, self.rank, self.world_size, self.shuffle = length, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.length)
        per_rank = math.ceil(self.length / self.world_size)
        order = order.repeat(math.ceil(per_rank * self.world_size / self.length))[: per_rank * self.world_size]
        return iter(order[self.rank :: self.world_size][self.start :].tolist())

    def __len__(self) -> int:
        return math.ceil(self.length / self.world_size) - self.start


def linear_decay(epoch: int, epochs: int, epochs_decay: int) -> float:
    """The reference schedule: 1 for ``epochs``, then linear towards 0 over ``epochs_decay``."""
    return 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)


class Callback:
    """Hooks into a run (reports, TensorBoard, the console); called on the main process only.
    Override the events you need."""

    def on_step(self, trainer: Trainer) -> None:
        pass

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        pass

    def on_sample(self, trainer: Trainer, path: Path) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.recipe = recipe
        self.cfg = recipe.train
        self.run_dir = Path(run_dir or recipe.run_dir)
        if rank is None or world_size is None:
            rank, world_size = rank_and_world_size()  # (0, 1) unless started by torchrun
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.callbacks: list[Callback] = []
        self.device = resolve_device(self.cfg.device)
        self.amp_dtype = resolve_precision(self.cfg.precision, self.device)
        torch.manual_seed(self.cfg.seed)

        self.dataset = build_dataset(recipe, "train", train=True)
        self.dataset.prepare()  # decode-once cache and on_bad_image, before the sampler counts samples
        self.in_channels, self.out_channels = self.dataset.in_channels, self.dataset.out_channels
        self.generator = build_generator(recipe, self.in_channels, self.out_channels).to(self.device)
        self.discriminator = build_discriminator(recipe, self.in_channels, self.out_channels).to(self.device)
        memory_format = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        self.memory_format = memory_format
        self.generator.to(memory_format=memory_format)
        self.discriminator.to(memory_format=memory_format)
        if self.cfg.cpu_speedups and self.device.type == "cpu":
            self.use_cpu_speedups()
        if self.cfg.sync_batchnorm and world_size > 1:
            if self.device.type != "cuda":
                raise I2IError("train.sync_batchnorm needs CUDA (torch's SyncBatchNorm runs on GPUs); "
                               "on CPU train with norm 'none' or 'instance' instead")
            self.generator = nn.SyncBatchNorm.convert_sync_batchnorm(self.generator)
            self.discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(self.discriminator)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one crop size all run long: pick the fastest kernels once
        (self.gan_loss, self.gan_weight), self.reconstruction = build_losses(recipe)
        self.gan_loss.to(self.device)

        implementation = {"fused": True} if self.cfg.fused_adam else {"foreach": True}
        adam = dict(lr=self.cfg.lr, betas=self.cfg.betas, **implementation)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), **adam)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), **adam)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.guard = NonFiniteGuard(
            self.cfg.on_nonfinite,
            {"generator": (self.generator, self.opt_g), "discriminator": (self.discriminator, self.opt_d)},
            watch_gradients=not self.scaler.is_enabled(),
        )
        self.saved_step: int | None = None
        self.G = self._wrap(self.generator, "generator")
        self.D = self._wrap(self.discriminator, "discriminator")
        # The G update only reads D: under DDP, D's wrapper would wait for D gradients that never come.
        self.D_frozen = self._wrap(self.discriminator, "discriminator", ddp=False) if world_size > 1 else self.D
        # wgan-gp differentiates D twice, which compiled graphs cannot; DDP needs no wrapper here
        # (the penalty's gradient is taken with respect to the images, and the D loss's
        # backward reduces all of D's gradients).
        self.D_penalty = self.discriminator

        self.sampler = EpochSampler(len(self.dataset), self.cfg.seed, rank, world_size)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.cfg.batch_size)
        total_epochs = self.cfg.epochs + self.cfg.epochs_decay
        self.total_steps = self.steps_per_epoch * total_epochs
        if self.cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, self.cfg.max_steps) if total_epochs else self.cfg.max_steps
        self.step = 0
        if self.cfg.eval_every and self.is_main:
            from i2i.bench.during_training import EvaluationCallback

            self.callbacks.append(EvaluationCallback(self))

    def _wrap(self, module: nn.Module, name: str, ddp: bool = True) -> Callable[..., torch.Tensor]:
        """What the step calls: the module, under DDP with several processes, compiled if asked."""
        if ddp and self.world_size > 1:
            module = wrap_ddp(module, self.device)
        if self.cfg.compile:
            return CompiledOrEager(module, self.cfg.compile_mode, name, self.log_line)
        return module

    def use_cpu_speedups(self) -> None:
        """The CPU rewrites of ``cpu_speedups`` (same math), sized on this run's crops, and
        the allocator setting (for the whole process)."""
        keep_freed_memory()
        size, batch = self.recipe.data.crop_size, self.cfg.batch_size
        example = torch.zeros(batch, self.in_channels, size, size).contiguous(memory_format=self.memory_format)
        pair = torch.zeros(batch, self.in_channels + self.out_channels, size, size).contiguous(
            memory_format=self.memory_format
        )
        for network, probe in ((self.generator, example), (self.discriminator, pair)):
            use_matmul_convolutions(network, probe)
            use_dense_batchnorm_gradients(network)

    def autocast(self):
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ---------------------------------------------------------------- the step
    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            fake_b = self.G(real_a)

        # 1. Discriminator: (input, target) is real, (input, generated) is fake.
        self.discriminator.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            fake_pair = torch.cat([real_a, fake_b.detach()], 1)
            real_pair = torch.cat([real_a, real_b], 1)
            d_real, d_fake = self.gan_loss.discriminator_loss(self.D(real_pair), self.D(fake_pair))
            loss_d = 0.5 * (d_real + d_fake) * self.gan_weight
            penalty = self.gan_loss.gradient_penalty(self.D_penalty, real_pair, fake_pair, self.rank, self.world_size)
            if penalty is not None:
                loss_d = loss_d + penalty
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)

        # 2. Generator: fool D, and stay close to the target.
        self.discriminator.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            g_gan = self.gan_loss.generator_loss(self.D_frozen(torch.cat([real_a, fake_b], 1))) * self.gan_weight
            terms = {f"G_{name}": weight * loss(fake_b.float(), real_b) for name, loss, weight in self.reconstruction}
            loss_g = g_gan + sum(terms.values())
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()

        return {"G_GAN": g_gan.detach(), **{k: v.detach() for k, v in terms.items()},
                "D_real": d_real.detach(), "D_fake": d_fake.detach()}

    # ------------------------------------------------------------- the loop
    def loader(self, epoch: int) -> Iterable[dict[str, Any]]:
        if self.recipe.data.on_device:
            return device_batches(self.dataset, self.sampler, self.cfg.batch_size, self.device)
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            sampler=self.sampler,
            num_workers=self.recipe.data.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # workers must see the dataset's new epoch
            # Its own generator: drawing worker seeds from the global RNG would shift
            # the dropout stream whenever a resumed run opens a loader mid-epoch.
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )

    def lr_factor(self, epoch: int) -> float:
        return linear_decay(epoch, self.cfg.epochs, self.cfg.epochs_decay)

    def set_epoch(self, epoch: int) -> None:
        for optimizer in (self.opt_g, self.opt_d):
            for group in optimizer.param_groups:
                group["lr"] = self.cfg.lr * self.lr_factor(epoch)

    def fit(self, resume: bool = False) -> dict[str, float]:
        with StopSignals() as self.stop, advise_on_out_of_memory(self.memory_use):
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, float]:
        if resume:
            self.resume()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.yaml").write_text(self.recipe.to_yaml())
        self._sample_batch = self.sample_inputs()
        totals: dict[str, torch.Tensor] = {}
        count, last = 0, {}
        tick, tick_step = time.perf_counter(), self.step
        self.generator.train()
        self.discriminator.train()
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            self.set_epoch(epoch)
            self.dataset.set_epoch(epoch)
            self.sampler.set_epoch(epoch, offset * self.cfg.batch_size)
            for batch in self.loader(epoch):
                real_a = batch["input"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                real_b = batch["target"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                self.guard.begin_step()
                losses = self.train_step(real_a, real_b)
                self.step += 1
                if self.guard.end_step(self.step, losses):
                    for key, value in losses.items():
                        totals[key] = totals.get(key, 0.0) + value
                    count += 1
                end_of_epoch = self.step % self.steps_per_epoch == 0
                done = self.step >= self.total_steps
                if self.step % self.cfg.log_every == 0 or done:
                    # The only host sync: loss values are read here, every log_every steps.
                    self.check_finite()
                    last = self.mean_losses(totals, count, list(losses))
                    now = time.perf_counter()
                    rate = (self.step - tick_step) / max(now - tick, 1e-9)
                    tick, tick_step = now, self.step
                    self.log({"step": self.step, "epoch": epoch, "lr": self.opt_g.param_groups[0]["lr"],
                              "steps_per_s": rate, **last, **self.guard.counts()})
                    totals, count = {}, 0
                if self.is_main and (self.step % self.cfg.sample_every == 0 or done):
                    self.save_samples()
                if self.step % self.cfg.checkpoint_every == 0 or end_of_epoch or done:
                    self.save()
                self.notify("on_step")
                if self.stop.requested and not done:
                    self.stop_on_signal()
                if done:
                    break
        self.notify("on_end")
        return last

    def check_finite(self) -> None:
        """Stop on a NaN/Inf loss or gradient since the last check (see ``faults.NonFiniteGuard``)."""
        self.guard.check(self.run_dir / "checkpoints")

    def mean_losses(self, totals: dict[str, torch.Tensor], count: int, keys: list[str]) -> dict[str, float]:
        """The logged losses: the mean over the steps kept since the last log, of every rank."""
        # The keys come from the latest step, not from totals: a rank whose steps were all skipped
        # has no totals, yet must add as many values as the others.
        zero = torch.zeros((), device=self.device)
        sums = [totals.get(key, zero).float() for key in keys] + [torch.tensor(float(count), device=self.device)]
        *sums, kept = sum_over_ranks(torch.stack(sums)).tolist()
        return {key: value / kept for key, value in zip(keys, sums)} if kept else {}

    def stop_on_signal(self) -> None:
        """At a step boundary after SIGINT/SIGTERM: save unless this step just was, then leave."""
        if self.saved_step != self.step:
            self.save()
        name = signal.Signals(self.stop.requested).name
        raise TrainingInterrupted(
            f"stopped by {name} at step {self.step} of {self.total_steps}; checkpoint saved in "
            f"{self.run_dir / 'checkpoints'}. Continue with --resume",
            self.stop.requested,
        )

    def memory_use(self) -> str:
        """What sets memory use, for the out-of-memory advice."""
        precision = str(self.amp_dtype).removeprefix("torch.")
        return (
            f"step {self.step} on {self.device}: train.batch_size {self.cfg.batch_size}, "
            f"data.crop_size {self.recipe.data.crop_size}, precision {precision}"
        )

    # ------------------------------------------------------- side outputs
    def log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.notify("on_log", record)

    def notify(self, event: str, *args: Any) -> None:
        if self.is_main:
            for callback in self.callbacks:
                getattr(callback, event)(self, *args)

    def log_line(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def sample_inputs(self, count: int = 4) -> dict[str, torch.Tensor]:
        """Fixed images to watch during training: the first of the val split, else of train."""
        try:
            dataset = build_dataset(self.recipe, "val", train=False)
        except I2IError:
            dataset = build_dataset(self.recipe, "train", train=False)
        items = [dataset[i] for i in range(min(count, len(dataset)))]
        return {
            key: torch.stack([item[key] for item in items]).to(self.device).contiguous(memory_format=self.memory_format)
            for key in ("input", "target")
        }

    @torch.no_grad()
    def save_samples(self) -> Path:
        """A grid: one row per image, input | generated | target. Generated as the reference
        tests: train mode with seeded dropout, and batch statistics over as many images as a
        training step sees (one at a time at the reference's batch 1)."""
        from i2i.visual import save_grid

        inputs = self._sample_batch["input"]
        with generator_mode(self.generator, "train", seed=self.cfg.seed):
            fake = torch.cat([self.generator(chunk) for chunk in inputs.split(self.cfg.batch_size)]).float()
        path = self.run_dir / "samples" / f"step_{self.step:08d}.png"
        save_grid([self._sample_batch["input"], fake, self._sample_batch["target"]], path)
        self.notify("on_sample", path)
        return path

    def metadata(self) -> dict[str, str]:
        return {
            "recipe": self.recipe.to_yaml(),
            "in_channels": str(self.in_channels),
            "out_channels": str(self.out_channels),
            "step": str(self.step),
            "i2i_version": __version__,
            # what `i2i translate` pads inputs to, kept where an export has no module to ask
            **({"size_multiple": str(self.generator.size_multiple)} if hasattr(self.generator, "size_multiple") else {}),
        }

    def save(self) -> Path | None:
        # A model with NaN/Inf in it is never saved: the last good checkpoint stays the newest.
        self.check_finite()
        self.guard.check_weights(self.run_dir / "checkpoints")
        if not self.is_main:
            barrier()  # the other ranks go on once rank 0's checkpoint is complete
            return None
        self.saved_step = self.step
        state = {
            "step": self.step,
            "world_size": self.world_size,
            "skipped_steps": self.guard.skipped_steps,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }
        path = save_checkpoint(
            self.run_dir / "checkpoints",
            self.step,
            {"generator": self.generator, "discriminator": self.discriminator},
            state,
            self.metadata(),
            keep=self.cfg.keep_checkpoints,
        )
        barrier()
        return path

    def resume(self) -> bool:
        path = latest_good_checkpoint(self.run_dir, self.log_line)
        if path is None:
            self.log_line(f"no checkpoint in {self.run_dir}; starting from scratch")
            return False
        load_weights(self.generator, path / "generator.safetensors")
        load_weights(self.discriminator, path / "discriminator.safetensors")
        state = load_state(path / "state.pt")
        try:
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng_cpu"])
            if self.device.type == "cuda" and state["rng_cuda"]:
                torch.cuda.set_rng_state_all(state["rng_cuda"])
            self.step = self.step_for_world_size(int(state["step"]), int(state.get("world_size", 1)))
            self.guard.skipped_steps = int(state.get("skipped_steps", 0))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"{path / 'state.pt'} is not a training state this recipe can resume from "
                f"({type(error).__name__}: {str(error)[:200]})"
            ) from None
        self.log_line(f"resumed from {path} at step {self.step}")
        return True

    def step_for_world_size(self, step: int, saved_world_size: int) -> int:
        """A step saved with another number of processes, as a step of this run: the same
        epoch, and the same number of samples into it."""
        if saved_world_size == self.world_size:
            return step
        saved_per_epoch = math.ceil(math.ceil(len(self.dataset) / saved_world_size) / self.cfg.batch_size)
        epoch, offset = divmod(step, saved_per_epoch)
        converted = epoch * self.steps_per_epoch + offset * saved_world_size // self.world_size
        self.log_line(f"checkpoint step {step} of {saved_world_size} process(es) is step {converted} of {self.world_size}")
        return converted
