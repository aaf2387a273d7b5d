"""Registries by name: one factory per concern, failing with the list of valid names."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterator, Union


class UnknownNameError(ValueError):
    """Raised when a name is not in a registry; the message lists the valid names."""


class Registry:
    """Maps names to objects, or to lazily imported ``"module:attr"`` strings.

    Lazy entries let ``sim_core`` name the baselines (which import ``sim_core``) without an import cycle.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Union[str, Any]] = {}

    def register(self, name: str, obj: Any = None):
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if obj is not None:
            self._entries[name] = obj
            return obj

        def deco(o):
            self._entries[name] = o
            return o

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}")
        obj = self._entries[name]
        if isinstance(obj, str):
            module, attr = obj.split(":")
            obj = getattr(importlib.import_module(module), attr)
            self._entries[name] = obj
        return obj

    def build(self, name: str, **kwargs) -> Any:
        """Call the entry with keyword arguments; wrong argument names become a one-line ValueError."""
        factory: Callable = self.get(name)
        try:
            return factory(**kwargs)
        except TypeError as e:
            raise ValueError(f"{self.kind} {name}: bad parameters {kwargs}: {e}") from None
