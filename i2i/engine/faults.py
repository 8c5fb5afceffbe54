"""What training does when something goes wrong: a stop signal, a NaN, no memory.

``StopSignals``: while training steps run, the first SIGINT/SIGTERM asks the trainer to
save a checkpoint at the next step boundary and exit; the signal's own default behaviour
is restored at once, so a second Ctrl-C (or SIGTERM) ends the process without waiting.
Outside the steps (resuming: verifying and loading a checkpoint; the end of the run) there
is no step boundary to wait for: the signal stops the run at once.

``NonFiniteGuard``: watches every loss term and the gradients of each network.
Under ``stop`` it records, on the device and without a host sync, the first step
at which each term went NaN/Inf; the trainer reads that when it reads the losses
(every ``log_every`` steps) and before every checkpoint, so a poisoned model is
never saved. Under ``skip`` an update whose gradients are not finite is dropped
(and the network's BatchNorm statistics restored); that decision must be taken
before the optimizer step, so ``skip`` costs one host sync per network per step.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from i2i.engine.checkpoint import list_checkpoints
from i2i.errors import I2IError


class TrainingInterrupted(I2IError):
    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class NonFiniteError(I2IError):
    pass


class StopSignals:
    """``requested`` is the number of the first SIGINT/SIGTERM received, else None. ``at_once``,
    where set, says where the run stands outside the training steps: a signal then raises
    ``TrainingInterrupted`` with it at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self.at_once: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        # Python only lets the main thread install handlers; elsewhere signals keep their defaults.
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._on_signal) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame) -> None:
        self.requested = signum
        self._restore()
        if self.at_once is not None:
            raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} {self.at_once}", signum)
        sys.stderr.write(
            f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step, then stopping "
            f"(send it again to stop at once, without saving)\n"
        )
        sys.stderr.flush()


class NonFiniteGuard:
    def __init__(self, policy: str, networks: dict[str, tuple[nn.Module, torch.optim.Optimizer]], watch_gradients: bool):
        self.policy = policy
        self.networks = networks
        self.first_bad: torch.Tensor | None = None  # per term: first non-finite step, -1 while finite
        self.terms: list[str] = []
        self.grad_norms: dict[str, torch.Tensor] = {}
        self.dropped: list[str] = []
        self.skipped_steps = 0
        self._buffers: dict[str, list[torch.Tensor]] = {}
        # GradScaler (fp16) already skips updates with non-finite gradients, by design and
        # often; gradients are only watched without it.
        if watch_gradients:
            for name, (_, optimizer) in networks.items():
                optimizer.register_step_pre_hook(partial(self._before_update, name))

    def _before_update(self, name: str, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.policy == "stop":
            self.grad_norms[f"gradient of the {name}"] = norm
        elif not torch.isfinite(norm):
            for p in params:
                p.grad = None  # Adam leaves parameters without a gradient untouched, moments included
            self.dropped.append(name)

    def begin_step(self) -> None:
        if self.policy == "skip":
            self.dropped = []
            self._buffers = {
                name: [b.detach().clone() for b in module.buffers()] for name, (module, _) in self.networks.items()
            }

    def end_step(self, step: int, losses: dict[str, torch.Tensor]) -> bool:
        """Record the step; False when it was skipped (its losses should not be averaged)."""
        if self.policy == "skip":
            return self._end_skipped_step(step, losses)
        values = {**losses, **self.grad_norms}
        stacked = torch.stack([v.float() for v in values.values()])
        if self.first_bad is None or len(values) != len(self.terms):
            self.terms = list(values)
            self.first_bad = torch.full(stacked.shape, -1, dtype=torch.long, device=stacked.device)
        newly_bad = ~torch.isfinite(stacked) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, step, self.first_bad)
        return True

    def _end_skipped_step(self, step: int, losses: dict[str, torch.Tensor]) -> bool:
        bad_losses = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        for name in self.dropped:
            for live, saved in zip(self.networks[name][0].buffers(), self._buffers[name]):
                live.copy_(saved)
        if not (self.dropped or bad_losses):
            return True
        if self.dropped:
            self.skipped_steps += 1
            action = f"skipped the update of the {' and '.join(self.dropped)} ({self.skipped_steps} step(s) skipped so far)"
        else:
            action = "its gradients were finite, so the update was kept"
        print(f"step {step}: non-finite {', '.join(bad_losses) or 'gradients'}; {action}", file=sys.stderr, flush=True)
        return False

    def counts(self) -> dict[str, int]:
        """For the log record: the steps skipped so far, once there are any."""
        return {"skipped_steps": self.skipped_steps} if self.skipped_steps else {}

    def check(self, where: Path) -> None:
        """Raise if any term went non-finite (a host sync under ``stop``); ``where``: the checkpoints folder."""
        if self.first_bad is None:
            return
        bad = [(step, term) for term, step in zip(self.terms, self.first_bad.tolist()) if step >= 0]
        if bad:
            first = min(step for step, _ in bad)
            terms = ", ".join(f"{term} (from step {step})" for step, term in sorted(bad))
            raise NonFiniteError(
                f"training stopped: non-finite values at step {first}: {terms}. "
                f"{_what_is_kept(where)}; try a lower train.lr or train.precision fp32, "
                f"or train.on_nonfinite skip to skip such steps"
            )

    def check_weights(self, where: Path) -> None:
        for name, (module, _) in self.networks.items():
            floats = [t for t in module.state_dict().values() if t.is_floating_point()]
            if not torch.stack([torch.isfinite(t).all() for t in floats]).all():
                raise NonFiniteError(
                    f"training stopped: the {name} holds non-finite weights; not saving them. "
                    f"{_what_is_kept(where)}"
                )


def _what_is_kept(folder: Path) -> str:
    found = list_checkpoints(Path(folder))
    return f"The last good checkpoint is kept: {found[-1]}" if found else f"No checkpoint was saved before this (none in {folder})"


OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory")


@contextlib.contextmanager
def advise_on_out_of_memory(describe) -> Iterator[None]:
    """Turn an allocation failure into advice; ``describe()`` names the settings that set memory use."""
    try:
        yield
    except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError, and so is the CPU allocator's
        if not (isinstance(error, torch.OutOfMemoryError) or any(s in str(error).lower() for s in OUT_OF_MEMORY)):
            raise
        raise I2IError(
            f"out of memory ({describe()}). Try a smaller train.batch_size or data.crop_size, "
            f"or train.precision bf16 (or auto), e.g. --set train.batch_size=1. "
            f"Detail: {str(error).splitlines()[0]}"
        ) from None
