"""A tiny name -> object registry that the CLI and the tests both iterate over."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from toughen.errors import ToughenUsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # "attack", "model", ...: used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> T:
        """Remove an entry (a test's own, once it is done)."""
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(sorted(self._entries))
            raise ToughenUsageError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
