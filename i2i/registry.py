"""Component registries: generators, discriminators, losses, datasets, training methods.

A component is a class that subclasses its kind's contract (``i2i.contracts``), registered under
the name recipes use, with the ``Params`` model of its parameters and a tiny ``example`` of them
(what ``i2i.testing`` builds it with)::

    @GENERATORS.register("unet", params=UNetParams, example={"num_downs": 5, "ngf": 8})
    class UNetGenerator(Generator):
        def __init__(self, params: UNetParams, in_channels: int, out_channels: int): ...

Every component, built-in or not, is declared by an entry point (i2i's own in its
pyproject.toml). A lookup imports nothing, with one exception: ``get`` imports the module an
entry point names when its name is not registered yet (``list`` does so for every name).
Which distributions may provide a name, double claims and broken plugins: ``i2i.plugins``.
A newcomer's guide: docs/plugins.md.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

from i2i.contracts import AdversarialLoss, Discriminator, Generator, Method, PairedDataset, Params, ReconstructionLoss
from i2i.errors import I2IError
from i2i.plugins import (
    BUILTIN,
    I2I,
    NOT_INSTALLED,
    PluginFailure,
    allowed_distributions,
    claims,
    double_claim,
    i2i_installed,
    label,
    load,
    not_allowed,
    origin_of,
    record,
)


class RegistryError(I2IError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    obj: type
    params: type[Params]
    example: dict[str, Any] = field(default_factory=dict, compare=False)  # tiny params for tests
    origin: str = BUILTIN  # "built-in", or "<distribution> <version>" for a plugin
    distribution: str | None = I2I  # normalised; None for code no installed distribution declares


@dataclass
class Registry:
    kind: str  # "generator", "discriminator", ...
    group: str  # entry-point group
    contract: type | tuple[type, ...]  # what every component must subclass
    _entries: dict[str, Entry] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def register(self, name: str, *, params: type[Params], example: dict[str, Any] | None = None) -> Callable[[type], type]:
        if not (isinstance(params, type) and issubclass(params, Params)):
            raise TypeError(f"{self.kind} '{name}': params must subclass i2i.contracts.Params")

        def decorator(obj: type) -> type:
            self._check_contract(name, obj)
            origin, distribution = origin_of(obj)
            if name in self._entries:
                previous = self._entries[name]
                raise RegistryError(
                    f"{self.kind} '{name}' registered twice: by {previous.origin} ({_qualname(previous.obj)}) "
                    f"and by {origin} ({_qualname(obj)})"
                )
            self._entries[name] = Entry(name, obj, params, dict(example or {}), origin, distribution)
            return obj

        return decorator

    def _check_contract(self, name: str, obj: Any) -> None:
        contracts = self.contract if isinstance(self.contract, tuple) else (self.contract,)
        if not (isinstance(obj, type) and issubclass(obj, contracts)):
            wanted = " or ".join(_qualname(c) for c in contracts)
            raise TypeError(f"{self.kind} '{name}': {_qualname(obj)} must subclass {wanted}")
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(obj.__abstractmethods__))
            raise TypeError(f"{self.kind} '{name}': {_qualname(obj)} does not define {missing}")

    # -- lookup ---------------------------------------------------------------
    def get(self, name: str, plugins: Iterable[str] | None = None) -> Entry:
        """The component called ``name``, importing the module its entry point names if it is not
        registered yet. ``plugins`` narrows which distributions may provide it (a recipe's ``plugins``)."""
        allowed = allowed_distributions(plugins)
        points = claims(self.group, allowed)
        entry = self._entries.get(name)
        clash = double_claim(self.kind, name, points.get(name, []), self._claimant(entry))
        if clash:
            raise RegistryError(clash)
        if entry is None and name in points:
            entry = self._load(points[name][0])
        if entry is None:
            raise RegistryError(self._missing(name, allowed, points))
        if allowed is not None and entry.distribution is not None and entry.distribution not in allowed:
            raise RegistryError(not_allowed(self.kind, name, entry.origin, allowed))
        return entry

    def __contains__(self, name: str) -> bool:
        """Whether ``name`` is registered now; imports nothing (``get`` loads a declared name)."""
        return name in self._entries

    def build(
        self, name: str, params: Params | dict[str, Any] | None = None, *, plugins: Iterable[str] | None = None, **context: Any
    ) -> Any:
        """The component ``name`` built from ``params`` (its Params object, or a mapping to validate)."""
        entry = self.get(name, plugins)
        if not isinstance(params, entry.params):
            params = entry.params.model_validate(params or {})
        return entry.obj(params, **context)

    def list(self, pattern: str = "*") -> list[str]:
        """Names matching an fnmatch pattern, after loading every declared component (so that
        broken plugins show up in ``failures``)."""
        for name, points in claims(self.group, allowed_distributions()).items():
            clash = double_claim(self.kind, name, points, self._claimant(self._entries.get(name)))
            if clash:
                record(self.failures, PluginFailure(self.kind, name, label(points[-1]), points[-1].value, clash))
            elif name not in self._entries:
                self._load(points[0])
        return sorted(name for name in self._entries if fnmatch.fnmatchcase(name, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[name] for name in self.list(pattern)]

    # -- loading --------------------------------------------------------------
    def _load(self, point: metadata.EntryPoint) -> Entry | None:
        obj = load(point, self.kind, self.failures)
        if obj is None:
            return None
        entry = self._entries.get(point.name)
        if entry is not None and entry.obj is obj:
            return entry
        registered_as = [e.name for e in self._entries.values() if e.obj is obj]
        if registered_as:
            problem = f"names a {self.kind} registered as '{registered_as[0]}': the entry point's name must be the registered name"
        else:
            problem = f"names {_qualname(obj)}, which is not registered: decorate it with @{self.kind.upper()}S.register('{point.name}', params=...)"
        record(self.failures, PluginFailure(self.kind, point.name, label(point), point.value, problem))
        return None

    def _claimant(self, entry: Entry | None) -> tuple[str | None, str, str] | None:
        return None if entry is None else (entry.distribution, entry.origin, _qualname(entry.obj))

    def _missing(self, name: str, allowed: set[str] | None, points: dict[str, list[metadata.EntryPoint]]) -> str:
        failed = [f for f in self.failures if f.name == name]
        if failed:
            return str(failed[-1])
        excluded = claims(self.group).get(name) if allowed is not None else None
        if excluded:
            return not_allowed(self.kind, name, label(excluded[0]), allowed)
        if not i2i_installed():
            return f"unknown {self.kind} '{name}': {NOT_INSTALLED}; the built-in components are entry points of the installed package"
        known = sorted(set(self._entries) | set(points))
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Available: {', '.join(known) or 'none'}"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


GENERATORS = Registry("generator", "i2i.generators", Generator)
DISCRIMINATORS = Registry("discriminator", "i2i.discriminators", Discriminator)
LOSSES = Registry("loss", "i2i.losses", (AdversarialLoss, ReconstructionLoss))
DATASETS = Registry("dataset", "i2i.datasets", PairedDataset)
METHODS = Registry("method", "i2i.methods", Method)

REGISTRIES = {
    "generators": GENERATORS,
    "discriminators": DISCRIMINATORS,
    "losses": LOSSES,
    "datasets": DATASETS,
    "methods": METHODS,
}
