"""``torch.compile``, and a CUDA graph of the whole training step, each with a way back to eager."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn


class CompiledOrEager:
    """Calls ``module`` compiled. Compilation happens at the first call, not at
    ``torch.compile()``, so that call is the one that may fail: on failure this
    says so once and calls the module eagerly from then on.

    ``freeze`` (inference only): parameters become constants that inductor folds and
    prepacks. It is set around every call rather than passed as a compile option:
    the option alone left the weights unfrozen (docs/engine.md), and a new input
    shape compiles again under whatever the config says then."""

    def __init__(self, module: nn.Module, mode: str, name: str, log_line: Callable[[str], None], freeze: bool = False):
        self.module, self.name, self.log_line = module, name, log_line
        self.freeze = freeze
        self.tried = False
        try:
            # frozen (inference): one static graph per input shape, never a shape-generic one
            self.call: Callable[..., Any] = torch.compile(module, mode=mode, dynamic=False if freeze else None)
        except Exception as error:  # platforms without compile support fail right here
            self._fall_back(error)

    def _fall_back(self, error: Exception) -> None:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        self.log_line(f"torch.compile failed for the {self.name} ({type(error).__name__}: {detail}); running it eagerly")
        self.call, self.tried = self.module, True

    def _config(self):
        if not self.freeze:
            return contextlib.nullcontext()
        from torch._inductor import config

        return config.patch(freezing=True)

    def __call__(self, *args: Any) -> Any:
        with self._config():
            if self.tried:
                return self.call(*args)
            try:
                result = self.call(*args)
            except Exception as error:
                self._fall_back(error)
                return self.module(*args)
        self.tried = True
        return result


class GraphedStep:
    """A CUDA training step captured once as one CUDA graph and replayed: the GPU then
    starts the whole step with one launch instead of one per kernel, which is what bounds
    a small batch (hundreds of kernels of microseconds each). Same kernels, same math.

    The first ``warmup`` calls run eagerly on a side stream (cuDNN picks its algorithms,
    the allocator settles), the next is captured into fixed input buffers and replayed;
    later calls copy their batch into those buffers and replay. The optimizers must be
    capturable with their learning rate in a tensor. A batch of another shape (an epoch's
    short last batch) runs eagerly and the next is captured again; a capture that fails
    says so once and the step stays eager. The returned losses are the graph's own
    tensors: read them before the next call."""

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], Any], log_line: Callable[[str], None], warmup: int = 3):
        self.step, self.log_line, self.warmup = step, log_line, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False

    def __call__(self, real_a: torch.Tensor, real_b: torch.Tensor) -> Any:
        if self.failed:
            return self.step(real_a, real_b)
        if self.graph is not None and real_a.shape != self.inputs[0].shape:
            # Eagerly; the step's Python-side state (the gradients' tensors, the guard's norms) is
            # then the eager step's, so the next batch of the usual shape is captured afresh.
            self.graph = None
            return self.step(real_a, real_b)
        if self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                losses = self.step(real_a, real_b)
            torch.cuda.current_stream().wait_stream(side)
            return losses
        if self.graph is None:
            try:
                self._capture(real_a, real_b)
            except Exception as error:
                detail = (str(error).strip().splitlines() or [""])[0][:200]
                self.log_line(f"CUDA graph capture of the training step failed ({type(error).__name__}: {detail}); "
                              f"running it eagerly")
                self.failed, self.graph = True, None
                return self.step(real_a, real_b)
        self.inputs[0].copy_(real_a)
        self.inputs[1].copy_(real_b)
        self.graph.replay()
        return self.outputs

    def _capture(self, real_a: torch.Tensor, real_b: torch.Tensor) -> None:
        self.inputs = (real_a.clone(), real_b.clone())
        graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread may use CUDA while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.outputs = self.step(*self.inputs)
        self.graph = graph
