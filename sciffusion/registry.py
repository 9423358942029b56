"""Registries: components are looked up by name from configs (never by import string).

A registry maps a name to a builder and, optionally, the dataclass that validates the builder's
keyword arguments. ``sciffusion list`` prints every registry. Domains register themselves when their
package ``sciffusion.domains.<name>`` is imported; :func:`get_domain` imports it on first use (this
module imports neither the config nor the domain base class, so both can use it).
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from sciffusion.extras import install_hint

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


# ------------------------------------------------------------------------------------------------
# Domains by name
# ------------------------------------------------------------------------------------------------
class DomainError(ValueError):
    """Unknown domain, or a domain that does not support a command."""


class DomainUnavailable(DomainError):
    """A domain whose optional dependencies are not installed."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"domain '{name}' needs packages that are not installed ({cause}); install them with: {install_hint(name)}")
        self.domain_name = name


_DOMAIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_instances: dict[str, Any] = {}


def _import_domain(name: str) -> None:
    module = f"sciffusion.domains.{name}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name in (module, "sciffusion.domains"):
            raise DomainError(f"unknown domain '{name}' (known: {', '.join(discover_domain_names()) or 'none'})") from None
        raise DomainUnavailable(name, e) from None
    except ImportError as e:
        raise DomainUnavailable(name, e) from None


def get_domain(name: str) -> Any:
    """The registered domain ``name``, importing ``sciffusion.domains.<name>`` on first use."""
    if not _DOMAIN_NAME.match(name):
        raise DomainError(f"invalid domain name {name!r} (lower-case letters, digits and _)")
    if name not in DOMAINS:
        _import_domain(name)
    if name not in DOMAINS:
        raise DomainError(f"module sciffusion.domains.{name} does not register a domain named '{name}'")
    if name not in _instances:
        instance = DOMAINS.build(name)
        if not getattr(instance, "name", ""):
            instance.name = name
        _instances[name] = instance
    return _instances[name]


def discover_domain_names() -> list[str]:
    """Registered domains plus every module found in the ``sciffusion.domains`` package."""
    names = set(DOMAINS.names())
    try:
        package = importlib.import_module("sciffusion.domains")
    except ImportError:
        package = None
    if package is not None:
        names.update(m.name for m in pkgutil.iter_modules(package.__path__) if _DOMAIN_NAME.match(m.name))
    return sorted(names)


def import_all_domains() -> dict[str, str]:
    """Import every discoverable domain; returns ``{name: reason}`` for those that failed."""
    failed: dict[str, str] = {}
    for name in discover_domain_names():
        try:
            get_domain(name)
        except DomainError as e:
            failed[name] = str(e)
        except Exception as e:  # a broken domain must not hide the others from `list`
            failed[name] = f"import failed: {type(e).__name__}: {e}"
    return failed
