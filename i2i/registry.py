"""Component registries: generators, discriminators, losses, datasets.

A component is a callable (usually an ``nn.Module`` class) registered under a
name together with the pydantic model of its parameters::

    @GENERATORS.register("unet", params=UNetParams)
    class UNetGenerator(nn.Module):
        def __init__(self, params: UNetParams, in_channels: int, out_channels: int): ...

Third-party packages add components through the entry-point groups
``i2i.generators``, ``i2i.discriminators``, ``i2i.losses`` and ``i2i.datasets``.
An entry point names a module attribute decorated as above; it is imported
only when its name is looked up (or when everything is listed).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from pydantic import BaseModel

BUILTIN = "built-in"


class I2IError(Exception):
    """An error with a message meant for the user; the CLI prints it without a traceback."""


class RegistryError(I2IError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Callable[..., Any]
    params: type[BaseModel]
    origin: str = BUILTIN


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


def _allowed_distributions() -> set[str] | None:
    """``I2I_PLUGINS`` restricts which distributions may provide plugins ("" = none)."""
    value = os.environ.get("I2I_PLUGINS")
    if value is None:
        return None
    return {name.strip().lower() for name in value.split(",") if name.strip()}


@dataclass
class Registry:
    kind: str  # "generator", "discriminator", ...
    group: str  # entry-point group
    builtin_modules: tuple[str, ...] = ()
    _entries: dict[str, Entry] = field(default_factory=dict)
    _builtins_loaded: bool = False
    _loading_origin: str | None = None
    failures: list[PluginFailure] = field(default_factory=list)

    def register(self, name: str, *, params: type[BaseModel]) -> Callable[[Any], Any]:
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise TypeError(f"{self.kind} '{name}': params must be a pydantic model class")
        if params.model_config.get("extra") != "forbid":
            raise TypeError(f"{self.kind} '{name}': {params.__name__} must set extra='forbid'")

        def decorator(obj: Any) -> Any:
            origin = self._loading_origin or BUILTIN
            if name in self._entries:
                previous = self._entries[name]
                raise RegistryError(
                    f"{self.kind} '{name}' registered twice: by {previous.origin} "
                    f"({_qualname(previous.obj)}) and by {origin} ({_qualname(obj)})"
                )
            self._entries[name] = Entry(name, obj, params, origin)
            return obj

        return decorator

    # -- lookup ---------------------------------------------------------------
    def get(self, name: str) -> Entry:
        self._load_builtins()
        plugin_points = self._entry_points()
        if name in self._entries and self._entries[name].origin == BUILTIN and name in plugin_points:
            raise RegistryError(
                f"{self.kind} '{name}' is claimed twice: built-in and by "
                f"{_distribution_label(plugin_points[name])} (entry point {plugin_points[name].value})"
            )
        if name not in self._entries and name in plugin_points:
            self._load_entry_point(plugin_points[name])
        if name in self._entries:
            return self._entries[name]
        failed = [f for f in self.failures if f.name == name]
        if failed:
            raise RegistryError(str(failed[-1]))
        known = sorted(set(self._entries) | set(plugin_points))
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RegistryError(f"unknown {self.kind} '{name}'.{hint} Available: {', '.join(known) or 'none'}")

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except RegistryError:
            return False
        return True

    def build(self, name: str, params: BaseModel | dict[str, Any] | None = None, **context: Any) -> Any:
        entry = self.get(name)
        if not isinstance(params, entry.params):
            params = entry.params.model_validate(params or {})
        return entry.obj(params, **context)

    def list(self, pattern: str = "*") -> list[str]:
        """Names matching an fnmatch pattern; plugins are imported so that failures show up."""
        self._load_builtins()
        for name, point in self._entry_points().items():
            if name not in self._entries and not any(f.name == name for f in self.failures):
                self._load_entry_point(point)
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.list(pattern)]

    # -- loading --------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self.builtin_modules:
                importlib.import_module(module)

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        allowed = _allowed_distributions()
        points = {}
        for point in metadata.entry_points(group=self.group):
            dist = point.dist.metadata["Name"].lower() if point.dist else ""
            if allowed is None or dist in allowed:
                points[point.name] = point
        return points

    def _load_entry_point(self, point: metadata.EntryPoint) -> None:
        origin = _distribution_label(point)
        self._loading_origin = origin
        try:
            obj = point.load()
            if point.name not in self._entries:
                self._entries[point.name] = _entry_from_object(point.name, obj, origin, self.kind)
        except Exception as error:  # a broken plugin must not break anything else
            self.failures.append(
                PluginFailure(self.kind, point.name, origin, point.value, f"{type(error).__name__}: {error}")
            )
        finally:
            self._loading_origin = None


def _entry_from_object(name: str, obj: Any, origin: str, kind: str) -> Entry:
    """An entry point may name an object registered under another name or not at all,
    as long as it declares its params model as ``obj.Params``."""
    params = getattr(obj, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise RegistryError(
            f"entry point '{name}' did not register a {kind}: decorate it with "
            f"@{kind.upper()}S.register('{name}', params=...) or give it a pydantic `Params` class"
        )
    return Entry(name, obj, params, origin)


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
