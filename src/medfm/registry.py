"""One generic registry: things registered by name, fetched by name or alias, listed by wildcard."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (and aliases) to objects, usually classes or factory functions.

    >>> models = Registry("models")
    >>> @models.register("vit_tiny", aliases=("vit_t",))
    ... def vit_tiny(): ...
    >>> models.get("vit_t") is vit_tiny
    True
    >>> models.list("vit_*")
    ['vit_tiny']
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    @overload
    def register(self, name: str, obj: None = None, *, aliases: Iterable[str] = ()) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T, *, aliases: Iterable[str] = ()) -> T: ...

    def register(self, name, obj=None, *, aliases=()):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""

        def add(target: T) -> T:
            for key in (name, *aliases):
                if key in self._items or key in self._aliases:
                    raise KeyError(f"{self.kind} {key!r} is already registered")
            self._items[name] = target
            for alias in aliases:
                self._aliases[alias] = name
            return target

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        key = self._aliases.get(name, name)
        if key not in self._items:
            known = [*self._items, *self._aliases]
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})")
        return self._items[key]

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names (not aliases) matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} items)"
