"""A name -> factory table, one per component kind (networks, generators, mixing policies, ...).

Each kind's registry lives in the ``__init__`` of its package and documents what an entry
takes and returns. Adding an entry is one module and one ``REGISTRY.add(...)`` line there.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from synthmix.errors import SynthmixError

T = TypeVar("T", bound=Callable)


class UnknownName(SynthmixError):
    """A YAML or CLI name that no registry entry answers to."""


class Registry(Generic[T]):
    """Factories keyed by the name used in YAML.

    Args:
        kind: what the entries are, for error messages ("network", "mixing policy").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, factory: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = factory
        return factory

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
