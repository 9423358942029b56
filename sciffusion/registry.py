"""Registries: components are looked up by name from configs (never by import string).

A registry maps a name to a builder and, optionally, the dataclass that validates the builder's
keyword arguments. ``sciffusion list`` prints every registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown component name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a plain one-liner
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    config: type | None
    help: str


class Registry(Generic[T]):
    """Name -> builder table for one kind of component (``nets``, ``processes``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: type | None = None, help: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@NETS.register("unet2d", config=UNet2DConfig)``."""

        def wrap(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc = help or (builder.__doc__ or "").strip().splitlines()[0:1]
            self._entries[name] = Entry(name, builder, config, doc if isinstance(doc, str) else "".join(doc))
            return builder

        return wrap

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            raise RegistryError(f"unknown {self.kind} '{name}' (known: {known})")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name).builder(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


NETS: Registry[Any] = Registry("net")
PROCESSES: Registry[Any] = Registry("process")
SOLVERS: Registry[Any] = Registry("solver")
GUIDANCE: Registry[Any] = Registry("guidance")
DOMAINS: Registry[Any] = Registry("domain")
