"""Component registries: generators, discriminators, losses, datasets.

A component is a callable (usually an ``nn.Module`` class) registered under a
name together with the pydantic model of its parameters::

    @GENERATORS.register("unet", params=UNetParams)
    class UNetGenerator(nn.Module):
        def __init__(self, params: UNetParams, in_channels: int, out_channels: int): ...

Third-party packages add components through the entry-point groups
``i2i.generators``, ``i2i.discriminators``, ``i2i.losses`` and ``i2i.datasets``.
An entry point names a module attribute decorated as above (or any callable
with a pydantic ``Params`` class); it is imported only when its name is looked
up (or when everything is listed). A plugin that fails to import is recorded in
``failures`` and breaks nothing else; a name claimed twice is an error naming
both claimants; ``I2I_PLUGINS`` and a recipe's ``plugins`` restrict which
distributions may provide components. A newcomer's guide: docs/plugins.md.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

from pydantic import BaseModel

from i2i.errors import I2IError

BUILTIN = "built-in"


class RegistryError(I2IError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Callable[..., Any]
    params: type[BaseModel]
    origin: str = BUILTIN  # "built-in", or "<distribution> <version>" for a plugin
    distribution: str | None = None  # normalised distribution name of a plugin


@dataclass(frozen=True)
class PluginFailure:
    kind: str
    name: str
    distribution: str
    entry_point: str
    error: str

    def __str__(self) -> str:
        return (
            f"plugin {self.kind} '{self.name}' from distribution {self.distribution} "
            f"(entry point {self.entry_point}) failed to load: {self.error}"
        )


def normalize_distribution(name: str) -> str:
    """PEP 503 normalisation, so that ``I2I_HD``, ``i2i.hd`` and ``i2i-hd`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _allowed_distributions(plugins: Iterable[str] | None = None) -> set[str] | None:
    """The distributions that may provide plugins (None = all): ``I2I_PLUGINS`` ("" = none),
    narrowed by a recipe's ``plugins`` list."""
    allowed = None
    value = os.environ.get("I2I_PLUGINS")
    if value is not None:
        allowed = {normalize_distribution(name.strip()) for name in value.split(",") if name.strip()}
    if plugins is not None:
        wanted = {normalize_distribution(name) for name in plugins}
        allowed = wanted if allowed is None else allowed & wanted
    return allowed


@dataclass
class Registry:
    kind: str  # "generator", "discriminator", ...
    group: str  # entry-point group
    builtin_modules: tuple[str, ...] = ()
    _entries: dict[str, Entry] = field(default_factory=dict)
    _builtins_loaded: bool = False
    failures: list[PluginFailure] = field(default_factory=list)

    def register(self, name: str, *, params: type[BaseModel]) -> Callable[[Any], Any]:
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise TypeError(f"{self.kind} '{name}': params must be a pydantic model class")
        if params.model_config.get("extra") != "forbid":
            raise TypeError(f"{self.kind} '{name}': {params.__name__} must set extra='forbid'")

        def decorator(obj: Any) -> Any:
            point = _providing_entry_point(obj)
            origin = _distribution_label(point) if point else BUILTIN
            if name in self._entries:
                previous = self._entries[name]
                raise RegistryError(
                    f"{self.kind} '{name}' registered twice: by {previous.origin} "
                    f"({_qualname(previous.obj)}) and by {origin} ({_qualname(obj)})"
                )
            self._entries[name] = Entry(name, obj, params, origin, _distribution_name(point) if point else None)
            return obj

        return decorator

    # -- lookup ---------------------------------------------------------------
    def get(self, name: str, plugins: Iterable[str] | None = None) -> Entry:
        """The component called ``name``, importing the plugin that provides it if needed.
        ``plugins`` restricts which distributions may provide it (as a recipe's ``plugins``)."""
        self._load_builtins()
        allowed = _allowed_distributions(plugins)
        points = self._entry_points(allowed)
        claims = points.get(name, [])
        clash = self._double_claim(name, claims)
        if clash:
            raise RegistryError(clash)
        if name not in self._entries and claims:
            self._load_entry_point(claims[0])
        entry = self._entries.get(name)
        if entry is not None:
            if allowed is not None and entry.distribution is not None and entry.distribution not in allowed:
                raise RegistryError(self._not_allowed(name, entry.origin, allowed))
            return entry
        failed = [f for f in self.failures if f.name == name]
        if failed:
            raise RegistryError(str(failed[-1]))
        excluded = self._entry_points(None).get(name) if allowed is not None else None
        if excluded:
            raise RegistryError(self._not_allowed(name, _distribution_label(excluded[0]), allowed))
        known = sorted(set(self._entries) | set(points))
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RegistryError(f"unknown {self.kind} '{name}'.{hint} Available: {', '.join(known) or 'none'}")

    def _not_allowed(self, name: str, origin: str, allowed: set[str]) -> str:
        return (
            f"{self.kind} '{name}' comes from {origin}, which is not among the allowed plugin "
            f"distributions ({', '.join(sorted(allowed)) or 'none'}; set by I2I_PLUGINS and the recipe's plugins)"
        )

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except RegistryError:
            return False
        return True

    def build(
        self, name: str, params: BaseModel | dict[str, Any] | None = None, *, plugins: Iterable[str] | None = None, **context: Any
    ) -> Any:
        entry = self.get(name, plugins)
        if not isinstance(params, entry.params):
            params = entry.params.model_validate(params or {})
        return entry.obj(params, **context)

    def list(self, pattern: str = "*") -> list[str]:
        """Names matching an fnmatch pattern; plugins are imported so that failures show up."""
        self._load_builtins()
        for name, claims in self._entry_points(_allowed_distributions()).items():
            clash = self._double_claim(name, claims)
            if clash:
                self._record_failure(name, claims[-1], clash)
            elif name not in self._entries:
                self._load_entry_point(claims[0])
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.list(pattern)]

    # -- loading --------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self.builtin_modules:
                importlib.import_module(module)

    def _entry_points(self, allowed: set[str] | None) -> dict[str, list[metadata.EntryPoint]]:
        """This group's entry points by name: one per distribution that claims the name."""
        points: dict[str, list[metadata.EntryPoint]] = {}
        for point in metadata.entry_points(group=self.group):
            dist = _distribution_name(point)
            if allowed is not None and dist not in allowed:
                continue
            claims = points.setdefault(point.name, [])
            # A distribution seen twice on sys.path (say, installed and editable) is one claim.
            if all(_distribution_name(other) != dist for other in claims):
                claims.append(point)
        return points

    def _double_claim(self, name: str, claims: list[metadata.EntryPoint]) -> str | None:
        sources = [f"{_distribution_label(p)} (entry point {p.value})" for p in claims]
        entry = self._entries.get(name)
        if entry is not None and entry.distribution not in {_distribution_name(p) for p in claims}:
            sources.insert(0, f"{entry.origin} ({_qualname(entry.obj)})")
        if len(sources) < 2:
            return None
        return f"{self.kind} '{name}' is claimed twice: by {' and by '.join(sources)}"

    def _load_entry_point(self, point: metadata.EntryPoint) -> None:
        try:
            obj = point.load()
            if point.name not in self._entries:
                self._entries[point.name] = self._entry_from_object(point, obj)
        except Exception as error:  # a broken plugin must not break anything else
            self._record_failure(point.name, point, f"{type(error).__name__}: {error}")

    def _entry_from_object(self, point: metadata.EntryPoint, obj: Any) -> Entry:
        """An entry point may name an object that is not registered, as long as it declares
        its params model as ``obj.Params``."""
        params = getattr(obj, "Params", None)
        if isinstance(params, type) and issubclass(params, BaseModel):
            return Entry(point.name, obj, params, _distribution_label(point), _distribution_name(point))
        registered_as = [e.name for e in self._entries.values() if e.obj is obj]
        if registered_as:
            raise RegistryError(
                f"entry point '{point.name}' names {_qualname(obj)}, which is registered as "
                f"'{registered_as[0]}': the entry point's name must be the registered name"
            )
        raise RegistryError(
            f"entry point '{point.name}' did not register a {self.kind}: decorate it with "
            f"@{self.kind.upper()}S.register('{point.name}', params=...) or give it a pydantic `Params` class"
        )

    def _record_failure(self, name: str, point: metadata.EntryPoint, error: str) -> None:
        failure = PluginFailure(self.kind, name, _distribution_label(point), point.value, error)
        if failure not in self.failures:
            self.failures.append(failure)


def missing_distributions(names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are not installed."""
    installed = {normalize_distribution(dist.metadata["Name"]) for dist in metadata.distributions()}
    return [name for name in names if normalize_distribution(name) not in installed]


def _providing_entry_point(obj: Any) -> metadata.EntryPoint | None:
    """The i2i entry point of the package that defines ``obj`` (None for i2i's own modules),
    so that a plugin's origin is right however its module came to be imported."""
    package = (getattr(obj, "__module__", None) or "").partition(".")[0]
    if package in ("", "i2i"):
        return None
    for dist in metadata.distributions():
        for point in dist.entry_points:
            if point.group.startswith("i2i.") and point.module.partition(".")[0] == package:
                return point
    return None


def _distribution_name(point: metadata.EntryPoint) -> str:
    return normalize_distribution(point.dist.metadata["Name"]) if point.dist else ""


def _distribution_label(point: metadata.EntryPoint) -> str:
    if point.dist is None:
        return "unknown distribution"
    return f"{point.dist.metadata['Name']} {point.dist.version}"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


GENERATORS = Registry("generator", "i2i.generators", ("i2i.models",))
DISCRIMINATORS = Registry("discriminator", "i2i.discriminators", ("i2i.models",))
LOSSES = Registry("loss", "i2i.losses", ("i2i.losses",))
DATASETS = Registry("dataset", "i2i.datasets", ("i2i.data",))

REGISTRIES = {
    "generators": GENERATORS,
    "discriminators": DISCRIMINATORS,
    "losses": LOSSES,
    "datasets": DATASETS,
}
