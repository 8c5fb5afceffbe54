"""Which installed distributions provide components, and the rules they follow.

Components are found through entry points (groups ``i2i.generators``, ``i2i.discriminators``,
``i2i.losses``, ``i2i.datasets``); i2i declares its own built-ins the same way. Only metadata is
read until a component is needed. The rules, applied by ``i2i.registry``:

- ``I2I_PLUGINS`` (comma-separated distribution names; empty: built-ins only) and a recipe's
  ``plugins`` list restrict which distributions may provide components;
- a name claimed by two distributions is an error naming both, never silent shadowing;
- a plugin that fails to import is recorded as a ``PluginFailure`` and breaks nothing else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable

I2I = "i2i"  # the distribution whose components are the built-ins
BUILTIN = "built-in"
NOT_INSTALLED = "i2i is not installed (run pip install -e .)"


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


def i2i_installed() -> bool:
    """Whether the i2i distribution is installed: its built-in components are its entry points, so a
    checkout imported from PYTHONPATH alone has none."""
    try:
        metadata.distribution(I2I)
    except metadata.PackageNotFoundError:
        return False
    return True


def normalize_distribution(name: str) -> str:
    """PEP 503 normalisation, so that ``I2I_HD``, ``i2i.hd`` and ``i2i-hd`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_distributions(plugins: Iterable[str] | None = None) -> set[str] | None:
    """The distributions that may provide plugins (None: all): ``I2I_PLUGINS`` narrowed by a
    recipe's ``plugins``. i2i itself is always allowed."""
    allowed = None
    value = os.environ.get("I2I_PLUGINS")
    if value is not None:
        allowed = {normalize_distribution(name) for name in value.split(",") if name.strip()}
    if plugins is not None:
        wanted = {normalize_distribution(name) for name in plugins}
        allowed = wanted if allowed is None else allowed & wanted
    return None if allowed is None else allowed | {I2I}


def not_allowed(kind: str, name: str, origin: str, allowed: set[str]) -> str:
    plugins = sorted(allowed - {I2I})
    return (
        f"{kind} '{name}' comes from {origin}, which is not among the allowed plugin distributions "
        f"({', '.join(plugins) or 'none'}; set by I2I_PLUGINS and the recipe's plugins)"
    )


def claims(group: str, allowed: set[str] | None = None) -> dict[str, list[metadata.EntryPoint]]:
    """The group's entry points by name, one per allowed distribution that claims the name."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    for point in metadata.entry_points(group=group):
        dist = distribution(point)
        if allowed is not None and dist not in allowed:
            continue
        named = found.setdefault(point.name, [])
        # A distribution seen twice on sys.path (installed and editable, say) is one claim.
        if all(distribution(other) != dist for other in named):
            named.append(point)
    for named in found.values():
        named.sort(key=lambda point: distribution(point) != I2I)  # the built-in claim first
    return found


def double_claim(kind: str, name: str, points: list[metadata.EntryPoint], registered: tuple[str, str, str] | None) -> str | None:
    """The error for a name claimed twice, or None. ``registered`` is (distribution, origin, object)
    of what is already registered under ``name``, which counts as a claim of its own when no
    entry point of its distribution claims the name."""
    sources = [f"{label(p)} (entry point {p.value})" for p in points]
    if registered is not None and registered[0] not in {distribution(p) for p in points}:
        sources.insert(0, f"{registered[1]} ({registered[2]})")
    if len(sources) < 2:
        return None
    return f"{kind} '{name}' is claimed twice: by {' and by '.join(sources)}"


def load(point: metadata.EntryPoint, kind: str, failures: list[PluginFailure]) -> Any | None:
    """The entry point's object, or None with the reason added to ``failures``. A plugin that
    raises, or calls ``sys.exit``, while importing must not take the rest of i2i with it."""
    try:
        return point.load()
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001
        record(failures, PluginFailure(kind, point.name, label(point), point.value, f"{type(error).__name__}: {error}"))
        return None


def record(failures: list[PluginFailure], failure: PluginFailure) -> None:
    if failure not in failures:
        failures.append(failure)


def origin_of(obj: Any) -> tuple[str, str | None]:
    """(label, distribution) of the distribution whose entry points name ``obj``'s package, so a
    component's origin is right however its module came to be imported; ("module <name>", None)
    for code that no installed distribution declares."""
    module = getattr(obj, "__module__", None) or "?"
    package = module.partition(".")[0]
    if package == I2I:
        return BUILTIN, I2I
    for dist in metadata.distributions():
        for point in dist.entry_points:
            if point.group.startswith("i2i.") and point.module.partition(".")[0] == package:
                return label(point), distribution(point)
    return f"module {module}", None


def missing_distributions(names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are not installed."""
    installed = {normalize_distribution(dist.metadata["Name"]) for dist in metadata.distributions()}
    return [name for name in names if normalize_distribution(name) not in installed]


def distribution(point: metadata.EntryPoint) -> str:
    return normalize_distribution(point.dist.metadata["Name"]) if point.dist else ""


def label(point: metadata.EntryPoint) -> str:
    """How a provider is shown: "built-in" for i2i, else "<distribution> <version>"."""
    if point.dist is None:
        return "unknown distribution"
    if distribution(point) == I2I:
        return BUILTIN
    return f"{point.dist.metadata['Name']} {point.dist.version}"
