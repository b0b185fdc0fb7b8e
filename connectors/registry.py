"""The one registry of connectors. A connector registers itself by being a module in
`connectors/destinations/` or `connectors/sources/` that defines a subclass with a `type`."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from connectors.destinations.base import Destination
from connectors.sources.base import Source


def _load_modules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def _concrete_subclasses(base: type) -> list[type]:
    found: list[type] = []
    for cls in base.__subclasses__():
        if getattr(cls, "type", None) and not getattr(cls, "__abstractmethods__", None):
            found.append(cls)
        found.extend(_concrete_subclasses(cls))
    return found


@cache
def destinations() -> dict[str, type[Destination]]:
    _load_modules("connectors.destinations")
    return {cls.type: cls for cls in _concrete_subclasses(Destination)}


@cache
def sources() -> dict[str, type[Source]]:
    _load_modules("connectors.sources")
    return {cls.type: cls for cls in _concrete_subclasses(Source)}


def destination_class(connector: str) -> type[Destination]:
    """The class registered for `connector`; KeyError when there is none."""
    return destinations()[connector]


def source_class(connector: str) -> type[Source]:
    return sources()[connector]
