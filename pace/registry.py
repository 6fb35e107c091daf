"""One registry per kind of extension: methods, backbones and data sets.

A module joins a registry by registering what it provides when it is imported (``METHODS`` through
``pace.methods.base.register_method``, ``BACKBONES`` through ``pace.backbones.registry.register``,
``DATASETS`` through ``pace.data.datasets.dataset``). The first time a registry is asked for a name
it imports every module of its built-in package, then every module named by its entry-point group
(``pace.methods``, ``pace.backbones``, ``pace.datasets``: extensions shipped in another package).
A module that does not import is an error naming it: nothing is skipped silently.

This module sits in the lowest layer: ``pace.config`` reads the method and data-set names from here,
while the modules that register are imported by name, never by ``import`` statements, so the layers
above stay above (see docs/design.md).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown or duplicate name, or an extension module that does not import."""


def did_you_mean(name: object, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, group: str):
        self.kind = kind  # "method", "backbone", "data set": used in messages
        self.package = package  # built-in modules: every module of this package
        self.group = group  # entry-point group of extensions in other packages
        self._entries: dict[str, T] = {}
        self._state = "empty"  # empty -> loading -> loaded

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def _load(self) -> None:
        # Reentrant: a module being imported may ask for names; it sees what is registered so far.
        if self._state != "empty":
            return
        self._state = "loading"
        try:
            pkg = importlib.import_module(self.package)
            for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
                importlib.import_module(f"{self.package}.{mod}")
            for ep in importlib.metadata.entry_points(group=self.group):
                try:
                    ep.load()
                except ImportError as exc:
                    raise RegistryError(f"{self.kind} extension {ep.name!r} (entry point {ep.value!r} in "
                                        f"group {self.group!r}) does not import: {exc}") from exc
        except BaseException:
            self._state = "empty"
            raise
        self._state = "loaded"

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def find(self, name: str) -> T | None:
        self._load()
        return self._entries.get(name)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise RegistryError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)} "
                                f"(known: {', '.join(sorted(self._entries))})")
        return self._entries[name]


# Entries: a Learner class (its ``config_cls`` is the method's config), a BackboneSpec, a DatasetSpec.
METHODS: Registry = Registry("method", "pace.methods", "pace.methods")
BACKBONES: Registry = Registry("backbone", "pace.backbones", "pace.backbones")
DATASETS: Registry = Registry("data set", "pace.data", "pace.datasets")
