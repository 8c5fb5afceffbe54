"""The pix2pix training loop.

``Trainer.train_step`` is the published step, top to bottom: generate, update D
on real and generated pairs (loss halved), update G on fooling D plus the
weighted reconstruction losses. ``fit`` is the loop around it: data order,
learning rate, logging, samples, checkpoints. Setup lives in ``setup.py``, the
saved training state in ``train_state.py``, data order and schedule in
``schedule.py``, the time budget's clock in ``budget.py``. (Over 300 lines: the
methods here are the side outputs, save/resume and time budget of one run, all on the
trainer's state, and ``probe_step`` needs a ``Trainer``.)
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from i2i.version import __version__
from i2i.engine.autotune import EngineChoice, choose_engine
from i2i.engine.budget import TimeBudget, describe
from i2i.engine.build import build_dataset, build_generator, build_method, resolve_device, resolve_precision
from i2i.engine.callbacks import Callback
from i2i.engine.checkpoint import latest_good_checkpoint, load_weights, read_weights, save_checkpoint
from i2i.engine.compiled import GraphedStep
from i2i.engine.ema import ParameterAverage
from i2i.engine.distributed import barrier, broadcast_from_main, broadcast_weights, rank_and_world_size
from i2i.engine.faults import NonFiniteGuard, StopSignals, TrainingInterrupted, advise_on_out_of_memory
from i2i.engine.inference import INFERENCE_FILE, INFERENCE_WEIGHTS, generator_mode
from i2i.engine.meter import LossMeter
from i2i.engine.precise_bn import fixed_batches, recompute_batchnorm
from i2i.engine.run_log import truncate_log
from i2i.engine.schedule import EpochSampler, Schedule
from i2i.engine.setup import TrainingBatches, build_networks, build_optimizers, wrap_for_step
from i2i.engine.train_state import TrainState
from i2i.contracts import StepTools
from i2i.errors import I2IError
from i2i.modes import DEFAULT_MODE
from i2i.recipe import Recipe
from i2i.safe_files import append_text, own_folder, write_file
from i2i.visual import save_grid


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path | None = None, rank: int | None = None, world_size: int | None = None,
                 quiet: bool = False):
        self.quiet = quiet  # `i2i run --quiet`: no notes (engine probe, resume), warnings only
        if rank is None or world_size is None:
            rank, world_size = rank_and_world_size()  # (0, 1) unless started by torchrun
        self.created = time.perf_counter()  # the startup train.time_budget leaves out runs from here
        self.recipe, self.cfg = recipe, recipe.train
        self.run_dir = Path(run_dir or recipe.run_dir)
        self.rank, self.world_size, self.is_main = rank, world_size, rank == 0
        self.callbacks: list[Callback] = []
        self.step, self.saved_step = 0, None
        self.device = resolve_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)

        self.dataset = build_dataset(recipe, "train", train=True)
        self.dataset.prepare()  # decode-once cache and on_bad_image, before the sampler counts samples
        self.dataset.start_decay_at(self.cfg.epochs)  # data.decay_load_size applies from there
        self.in_channels, self.out_channels = self.dataset.in_channels, self.dataset.out_channels
        self.use_schedule(None)
        self.engine = self.choose_engine()
        engine_recipe = recipe.variant(**{f"train.{key}": value for key, value in self.engine.settings.items()})
        self.amp_dtype = resolve_precision(self.engine.settings["precision"], self.device)
        self.memory_format = torch.channels_last if self.engine.settings["channels_last"] else torch.contiguous_format
        self.method = build_method(engine_recipe)
        self.networks = build_networks(self.method, (self.in_channels, self.out_channels), engine_recipe, self.device,
                                       self.memory_format, world_size)
        self.generator, self.discriminator = self.networks["generator"], self.networks["discriminator"]
        self.opt_g, self.opt_d, self.scaler = build_optimizers(engine_recipe, self.method, self.networks, self.device, self.amp_dtype)
        self.guard = NonFiniteGuard(
            self.cfg.on_nonfinite,
            {"generator": (self.side_module(self.method.generator_side), self.opt_g),
             "discriminator": (self.side_module(self.method.discriminator_side), self.opt_d)},
            watch_gradients=not self.scaler.is_enabled(),
        )
        wrap = dict(recipe=engine_recipe, device=self.device, world_size=world_size, log_line=self.log_line)
        call = {name: wrap_for_step(network, name, **wrap) for name, network in self.networks.items()}
        # A discriminator used in the G update only gives gradients to G: under DDP, its wrapper would
        # wait for D gradients that never come.
        call_frozen = {name: wrap_for_step(self.networks[name], name, ddp=False, **wrap) if world_size > 1 else call[name]
                       for name in self.method.discriminator_side}
        self.method.bind(StepTools(self.networks, call, call_frozen, self.opt_g, self.opt_d, self.scaler, self.autocast,
                                   self.device, rank, world_size))
        self.train_step = self.method.train_step
        if self.engine.settings["cuda_graph"] and self.device.type == "cuda":  # the optimizers were built capturable
            if world_size > 1:
                self.log_line("train.cuda_graph: not with several processes (DDP); the step runs eagerly")
            elif not self.method.graphable:
                self.log_line(f"train.cuda_graph: the {self.recipe.method.name} step draws random numbers on the host; "
                              "it runs eagerly")
            else:
                self.train_step = GraphedStep(self.method.train_step, self.log_line)
        # The average lives on rank 0, which alone makes samples and writes checkpoints.
        average = self.cfg.ema if self.is_main else None
        self.average = average and ParameterAverage(self.generator, average.decay, average.start_step,
                                                    average.every, average.power)
        self.sampler = EpochSampler(len(self.dataset), self.cfg.seed, rank, world_size)
        self.batches = TrainingBatches(recipe, self.dataset, self.sampler, self.device)
        self.budget = self.cfg.time_budget and TimeBudget(self.cfg.time_budget, self.device, world_size)
        self.fitted: int | None = None  # the steps the lr schedule is fitted to (train.budget_schedule fit)
        self.fit_kept = False  # the fit no longer refined: the decay has begun, or it came with a resume
        self.budget_spent = False
        self.lr: float | None = None  # as last set: the optimizers' own may be a device tensor (capturable)

    def use_schedule(self, fitted_steps: int | None) -> None:
        """The recipe's schedule, or the one fitted into ``fitted_steps``."""
        self.schedule = Schedule.of(self.cfg, len(self.dataset), self.world_size, fitted_steps)
        self.steps_per_epoch, self.total_steps = self.schedule.steps_per_epoch, self.schedule.total_steps

    def choose_engine(self) -> EngineChoice:
        """The engine settings (``autotune.choose_engine``): rank 0 decides, every rank uses its choice."""
        choice = None
        if self.is_main:
            choice = choose_engine(self.recipe, self.device, (self.in_channels, self.out_channels),
                                   lambda settings: probe_step(self.recipe, settings), self.schedule.total_steps,
                                   self.log_line, self.warn_line)
        return broadcast_from_main(choice) if self.world_size > 1 else choice

    def autocast(self):
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def side_module(self, names: tuple[str, ...]) -> torch.nn.Module:
        """The networks of one optimizer as one module (for the NaN guard's buffer snapshots)."""
        if len(names) == 1:
            return self.networks[names[0]]
        return torch.nn.ModuleList(self.networks[name] for name in names)

    # ------------------------------------------------------------- the loop
    def fit(self, resume: bool = False) -> dict[str, float]:
        with StopSignals() as self.stop, advise_on_out_of_memory(self.memory_use):
            self.stop.at_once = "before the first step; the checkpoints are as they were"
            if resume:
                self.resume()
            self.start_run_dir()
            self.stop.at_once = None  # from here a stop waits for the step boundary and its checkpoint
            meter, last = LossMeter(self.device, self.step), {}
            for network in self.networks.values():
                network.train()
            self.start_budget()
            while self.step < self.total_steps and not self.budget_spent:
                epoch, offset = divmod(self.step, self.steps_per_epoch)
                self.set_epoch(epoch, offset)
                for batch in self.batches.epoch():
                    real_a, real_b = (batch[k].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                                      for k in ("input", "target"))
                    self.guard.begin_step()
                    self.method.set_progress(self.step, self.total_steps)
                    losses = self.train_step(real_a, real_b)
                    self.step += 1
                    if self.guard.end_step(self.step, losses):
                        meter.add(losses)
                    if self.average:
                        self.average.update(self.step)
                    if self.budget:
                        self.budget_spent = self.budget.spent()
                        self.fit_schedule()
                    if self.fitted:  # a fitted schedule's rate moves within epochs
                        self.set_lr(self.step)
                    done = self.step >= self.total_steps or self.budget_spent
                    if self.step % self.cfg.log_every == 0 or done:
                        self.check_finite()  # the only host sync: losses are read every log_every steps
                        last, rate = meter.read(list(losses), self.step)
                        self.log({"step": self.step, "epoch": epoch, "lr": float(self.opt_g.param_groups[0]["lr"]),
                                  "steps_per_s": rate, **last, **self.guard.counts()})
                    if self.is_main and (self.step % self.cfg.sample_every == 0 or done):
                        self.save_samples()
                    epoch_end = self.cfg.checkpoint_each_epoch and self.step % self.steps_per_epoch == 0
                    if self.step % self.cfg.checkpoint_every == 0 or epoch_end or done:
                        self.save()
                    self.notify("on_step")
                    if self.stop.requested and not done:
                        self.stop_on_signal()
                    if done:
                        break
            self.stop.at_once = f"after the last step ({self.step}), whose checkpoint is saved"
            if self.budget_spent:
                self.report_budget_stop()
            self.notify("on_end")
            return last

    def set_epoch(self, epoch: int, offset: int = 0) -> None:
        """The learning rate, augmentation seed and sample order of ``epoch``, ``offset`` steps in."""
        self.set_lr(epoch * self.steps_per_epoch + offset)
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, offset * self.cfg.batch_size)

    def set_lr(self, step: int) -> None:
        """The learning rates (G's, and D's at ``train.d_lr_ratio`` times it) of the step after ``step`` steps."""
        lr = self.cfg.lr * self.schedule.lr_factor(step)
        if lr == self.lr:
            return
        self.lr = lr
        for optimizer, lr in ((self.opt_g, lr), (self.opt_d, lr * self.cfg.d_lr_ratio)):
            for group in optimizer.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)  # in place: a captured step reads this tensor
                else:
                    group["lr"] = lr

    # ------------------------------------------------------- time budget
    def start_budget(self) -> None:
        """Start train.time_budget's clock (now, as the loop starts), and say what it leaves out."""
        if not self.budget:
            return
        self.budget.start(self.step)
        fit = "" if self.cfg.budget_schedule == "keep" else (
            f"; the schedule fitted before the resume is kept: {self.describe_fit()}" if self.fitted else
            "; the lr schedule is fitted to it once the steps/s are measured")
        self.log_line(f"train.time_budget {describe(self.budget.seconds)} starts at step {self.step}, "
                      f"{self.budget.started - self.created:.1f} s after setup began (setup not counted){fit}")

    def fit_schedule(self) -> None:
        """train.budget_schedule fit: at the step that ends the timed steps, rank 0 estimates the
        steps the budget allows and every rank takes the schedule fitted into them; the estimate
        is refined (``budget.REFINE_EVERY``) until the lr's decay begins, then kept."""
        if self.cfg.budget_schedule != "fit" or self.fit_kept or self.budget_spent:
            return
        rate = self.budget.measured_rate(self.step)
        if rate is None:
            return
        if self.fitted and self.schedule.decaying(self.step):  # from here a new fit would move the lr back up
            self.fit_kept = True
            self.log_line(f"train.budget_schedule fit: the decay began by step {self.step}; the schedule stays fitted "
                          f"into {self.fitted} steps")
            return
        estimate = self.budget.estimated_steps(self.step, rate)
        if self.cfg.max_steps is not None:
            estimate = min(estimate, self.cfg.max_steps)
        if self.world_size > 1:
            rate, estimate = broadcast_from_main((rate, estimate))
        before = self.fitted
        self.fitted = max(estimate, self.step + 1)
        self.use_schedule(self.fitted)
        if before is None:
            self.log_line(f"train.budget_schedule fit: {rate:.3g} steps/s at step {self.step}, so about {estimate} "
                          f"steps in the budget: {self.describe_fit()}; refined until the decay begins")
        if self.fitted != before:
            self.log({"step": self.step, "time_budget": {"steps_per_s": rate, "estimated_steps": estimate,
                                                         "fitted_steps": self.fitted, "epochs": self.cfg.epochs,
                                                         "epochs_decay": self.cfg.epochs_decay}})

    def describe_fit(self) -> str:
        epochs = self.cfg.epochs + self.cfg.epochs_decay
        return (f"the schedule's {self.cfg.epochs} epochs at lr {self.cfg.lr:g} and {self.cfg.epochs_decay} of decay "
                f"fitted into {self.fitted} steps ({self.fitted / epochs:.3g} steps each, against "
                f"{self.steps_per_epoch} in an epoch of the data)")

    def report_budget_stop(self) -> None:
        """Say why the run stopped, in the console and in log.jsonl (the checkpoint is saved)."""
        loop, startup = self.budget.spent_after, self.budget.started - self.created
        saving = self.budget.elapsed() - loop
        steps = self.step - self.budget.first_step
        short = (f"; the budget was shorter than the first step ({loop:.3g} s), which still ran and was saved"
                 if steps == 1 else "")
        self.log_line(f"train.time_budget {describe(self.budget.seconds)} spent: stopped at step {self.step} of "
                      f"{self.total_steps}, {steps} step(s) and {loop:.1f} s into the training loop (then {saving:.1f} s "
                      f"for the last samples and checkpoint; setup before the loop: {startup:.1f} s, not counted){short}; "
                      f"checkpoint saved in {self.run_dir / 'checkpoints'}")
        self.log({"step": self.step, "time_budget": {"stopped": True, "budget_s": self.budget.seconds, "loop_s": loop,
                                                     "saving_s": saving, "setup_s": startup, "steps": steps}})

    def start_run_dir(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_file(self.run_dir / "recipe.yaml", self.recipe.to_yaml())
            truncate_log(self.run_dir, self.step)  # steps past a resumed checkpoint are redone: one record each
        self._sample_batch = self.sample_inputs()

    def check_finite(self) -> None:
        """Stop on a NaN/Inf loss or gradient since the last check (see ``faults.NonFiniteGuard``)."""
        self.guard.check(self.run_dir / "checkpoints")

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
        append_text(self.run_dir / "log.jsonl", json.dumps(record) + "\n")
        self.notify("on_log", record)

    def notify(self, event: str, *args: Any) -> None:
        if self.is_main:
            for callback in self.callbacks:
                getattr(callback, event)(self, *args)

    def log_line(self, text: str) -> None:
        if self.is_main and not self.quiet:
            print(text, flush=True)

    def warn_line(self, text: str) -> None:
        """What goes wrong without stopping the run (a damaged checkpoint passed over, an engine cache
        that cannot be used): --quiet or not."""
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
        """A grid: one row per image, input | generated | target, generated as ``i2i translate``
        does by default (``DEFAULT_MODE``, the inference weights)."""
        inputs = self._sample_batch["input"]
        generator = self.inference_generator(eval_statistics=DEFAULT_MODE == "eval") or self.generator
        with generator_mode(generator, DEFAULT_MODE, seed=self.cfg.seed):
            fake = torch.cat([generator(chunk) for chunk in inputs.split(self.cfg.batch_size)]).float()
        path = own_folder(self.run_dir / "samples") / f"step_{self.step:08d}.png"
        save_grid([inputs, fake, self._sample_batch["target"]], path)
        self.notify("on_sample", path)
        return path

    def metadata(self) -> dict[str, str]:
        return {
            "recipe": self.recipe.to_yaml(),
            "in_channels": str(self.in_channels),
            "out_channels": str(self.out_channels),
            "step": str(self.step),
            "i2i_version": __version__,
        }  # each generator's file adds its own size_multiple (checkpoint._serialise)

    def inference_generator(self, eval_statistics: bool = True) -> torch.nn.Module | None:
        """A plain fp32 copy of the generator for inference: the averaged weights where train.ema
        is on, and (``eval_statistics``) BatchNorm statistics recomputed over the first
        train.eval_bn_batches training batches of a fixed order. None where neither applies
        (a generator without BatchNorm, such as CycleGAN's and CUT's, has no statistics to redo).
        Made on a fork of the RNG, so that a run's random stream does not depend on it."""
        has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.generator.modules())
        eval_statistics = eval_statistics and has_batchnorm and self.cfg.eval_bn_batches > 0
        if self.average is None and not eval_statistics:
            return None
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            model = build_generator(self.recipe, self.in_channels, self.out_channels).to(self.device)
        model.load_state_dict(self.generator.state_dict())
        if self.average is not None:
            model.load_state_dict(self.average.state_dict(), strict=False)  # the parameters; buffers stay
        if eval_statistics:
            batches = fixed_batches(self.dataset, self.cfg.eval_bn_batches, self.cfg.batch_size, self.cfg.seed)
            recompute_batchnorm(model, batches, self.cfg.eval_bn_dropout)
        return model

    def save(self) -> Path | None:
        # A model with NaN/Inf in it is never saved: the last good checkpoint stays the newest.
        self.check_finite()
        self.guard.check_weights(self.run_dir / "checkpoints")
        if not self.is_main:
            barrier()  # the other ranks go on once rank 0's checkpoint is complete
            return None
        self.saved_step = self.step
        state = TrainState.capture(self.step, self.world_size, self.guard.skipped_steps, self.opt_g, self.opt_d,
                                   self.scaler, self.device, self.method.state_dict(), self.fitted)
        inference = self.inference_generator()
        path = save_checkpoint(
            self.run_dir / "checkpoints",
            self.step,
            {**self.networks, **({INFERENCE_WEIGHTS: inference} if inference else {})},
            state.as_dict(),
            self.metadata(),
            keep=self.cfg.keep_checkpoints,
        )
        barrier()
        return path

    def resume(self) -> bool:
        # Rank 0 alone reads the checkpoint and hands it to the others: nodes need not share a filesystem.
        path = latest_good_checkpoint(self.run_dir, self.warn_line) if self.is_main else None
        if self.world_size > 1:
            path = broadcast_from_main(path)
        if path is None:
            self.log_line(f"no checkpoint in {self.run_dir}; starting from scratch")
            return False
        state = None
        if self.is_main:
            for name, network in self.networks.items():
                load_weights(network, path / f"{name}.safetensors")
            state = TrainState.load(path / "state.pt")
            self.resume_average(path)
        if self.world_size > 1:
            broadcast_weights(*self.networks.values())
            state = broadcast_from_main(state)
        state.restore(path / "state.pt", self.opt_g, self.opt_d, self.scaler, self.device, self.method)
        self.lr = None  # the optimizers now hold the checkpoint's
        self.step = self.step_for_world_size(state.step, state.world_size)
        self.guard.skipped_steps = state.skipped_steps
        if state.fitted_steps and self.cfg.budget_schedule == "fit":
            self.fitted = self.step_for_world_size(state.fitted_steps, state.world_size)
            self.fit_kept = True
            self.use_schedule(self.fitted)
        self.log_line(f"resumed from {path} at step {self.step}")
        return True

    def resume_average(self, checkpoint: Path) -> None:
        """The average as saved (the inference weights' parameters); from the resumed weights
        where the checkpoint has none (train.ema turned on at the resume)."""
        if self.average is None:
            return
        if (checkpoint / INFERENCE_FILE).is_file():
            self.average.load_state_dict(read_weights(checkpoint / INFERENCE_FILE)[0])
        else:
            self.average.load_state_dict(dict(self.generator.named_parameters()))
            self.log_line(f"train.ema: {checkpoint} holds no average; it starts from the resumed weights")

    def step_for_world_size(self, step: int, saved_world_size: int) -> int:
        if saved_world_size == self.world_size:
            return step
        saved = Schedule.of(self.cfg, len(self.dataset), saved_world_size)
        converted = self.schedule.step_from(step, saved, saved_world_size, self.world_size)
        self.log_line(f"checkpoint step {step} of {saved_world_size} process(es) is step {converted} of {self.world_size}")
        return converted


def probe_step(recipe: Recipe, settings: dict[str, Any]) -> Callable[[], Any]:
    """One training step with the engine ``settings``, of a throwaway trainer on one fixed
    random batch of the recipe's shape (for the engine probe: nothing is written)."""
    probe = recipe.variant(**{f"train.{key}": value for key, value in settings.items()},
                           **{"train.eval_every": None, "data.cache": "none", "data.on_bad_image": "error", "data.on_device": False})
    trainer = Trainer(probe, run_dir=Path(tempfile.gettempdir()) / "i2i-engine-probe", rank=0, world_size=1)
    size, batch = probe.data.crop_size, probe.train.batch_size
    real_a, real_b = (torch.rand(batch, channels, size, size, device=trainer.device).mul(2).sub(1)
                      .contiguous(memory_format=trainer.memory_format)
                      for channels in (trainer.in_channels, trainer.out_channels))
    for network in trainer.networks.values():
        network.train()
    return lambda: trainer.train_step(real_a, real_b)
