"""What a checkpoint holds beside the weights, so that a resumed run continues bit for bit:
the step, the optimizers, the gradient scaler, the random number generators, the
method's own state (CycleGAN's image pools) and the schedule fitted to a time budget."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from i2i.engine.checkpoint import CheckpointError, load_state


@dataclass
class TrainState:
    step: int
    world_size: int
    skipped_steps: int
    opt_g: dict[str, Any]
    opt_d: dict[str, Any]
    scaler: dict[str, Any]
    rng_cpu: torch.Tensor
    rng_cuda: list[torch.Tensor]
    method: dict[str, Any]
    fitted_steps: int | None = None  # the steps train.budget_schedule fit fitted the lr schedule into

    @classmethod
    def capture(
        cls, step: int, world_size: int, skipped_steps: int, opt_g, opt_d, scaler, device: torch.device,
        method: dict[str, Any], fitted_steps: int | None = None,
    ) -> TrainState:
        return cls(
            step=step,
            world_size=world_size,
            skipped_steps=skipped_steps,
            opt_g=opt_g.state_dict(),
            opt_d=opt_d.state_dict(),
            scaler=scaler.state_dict(),
            rng_cpu=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            method=method,
            fitted_steps=fitted_steps,
        )

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every optimizer tensor (hundreds of MB) on each save.
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @classmethod
    def load(cls, path: Path) -> TrainState:
        state = load_state(path)
        try:
            return cls(
                step=int(state["step"]),
                world_size=int(state.get("world_size", 1)),  # checkpoints from before DDP have none
                skipped_steps=int(state.get("skipped_steps", 0)),
                method=dict(state.get("method", {})),  # checkpoints from before methods: pix2pix's, empty
                fitted_steps=state.get("fitted_steps"),  # None: the recipe's schedule
                **{key: state[key] for key in ("opt_g", "opt_d", "scaler", "rng_cpu", "rng_cuda")},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise _not_resumable(path, error) from None

    def restore(self, path: Path, opt_g, opt_d, scaler, device: torch.device, method) -> None:
        """Load the optimizers, scaler, RNGs and the method's state (``path`` names the file in errors)."""
        try:
            opt_g.load_state_dict(self.opt_g)
            opt_d.load_state_dict(self.opt_d)
            scaler.load_state_dict(self.scaler)
            method.load_state_dict(self.method)
            torch.set_rng_state(self.rng_cpu)
            if device.type == "cuda" and self.rng_cuda:
                torch.cuda.set_rng_state_all(self.rng_cuda)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise _not_resumable(path, error) from None


def _not_resumable(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a training state this recipe can resume from ({type(error).__name__}: {str(error)[:200]})"
    )
