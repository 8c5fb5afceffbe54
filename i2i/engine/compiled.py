"""``torch.compile`` with a way back to eager."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class CompiledOrEager:
    """Calls ``module`` compiled. Compilation happens at the first call, not at
    ``torch.compile()``, so that call is the one that may fail: on failure this
    says so once and calls the module eagerly from then on."""

    def __init__(self, module: nn.Module, mode: str, name: str, log_line: Callable[[str], None], freeze: bool = False):
        """``freeze``: inference only; parameters become constants that inductor folds and prepacks."""
        self.module, self.name, self.log_line = module, name, log_line
        self.tried = False
        try:
            # torch.compile takes a mode or inductor options, not both
            compiled = torch.compile(module, options={"freezing": True}) if freeze else torch.compile(module, mode=mode)
            self.call: Callable[..., Any] = compiled
        except Exception as error:  # platforms without compile support fail right here
            self._fall_back(error)

    def _fall_back(self, error: Exception) -> None:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        self.log_line(f"torch.compile failed for the {self.name} ({type(error).__name__}: {detail}); running it eagerly")
        self.call, self.tried = self.module, True

    def __call__(self, *args: Any) -> Any:
        if self.tried:
            return self.call(*args)
        try:
            result = self.call(*args)
        except Exception as error:
            self._fall_back(error)
            return self.module(*args)
        self.tried = True
        return result
