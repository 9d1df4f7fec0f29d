"""A small name registry with lazy ``"module:attr"`` entries and "did you mean" errors.

Every swappable part of the workbook (samplers, scorers, stopping policies, fit families,
predictor backbones) is looked up by name through one of these, so a profile can name a part
and heavy backends (vLLM, torch) are imported only when the part is actually used.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        """Register ``obj`` (or a lazy ``"package.module:attr"`` string) under ``name``.

        Used bare as ``registry.register("name", "pkg.mod:Cls")`` or as a decorator
        ``@registry.register("name")``.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if obj is not None:
            self._entries[name] = obj
            return obj

        def deco(o: T) -> T:
            self._entries[name] = o
            return o

        return deco

    def unknown(self, name: object) -> str | None:
        """None when ``name`` is registered, else the message of the error for it (the known
        names, and "did you mean" the close ones). Imports nothing: a lazy entry stays a string."""
        if isinstance(name, str) and name in self._entries:
            return None
        close = difflib.get_close_matches(name, list(self._entries), n=3) if isinstance(name, str) else []
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}.{hint}"

    def get(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
