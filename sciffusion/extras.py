"""Optional dependencies (the ``[project.optional-dependencies]`` extras): import one, or fail with a
one-line error that names the command installing it."""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ValueError):
    """An optional package that a command needs is not installed (the CLI prints it on one line, exit 2)."""


def install_hint(extra: str) -> str:
    """The commands that install sciffusion's extra ``extra``: from a source checkout and from a wheel."""
    return f"pip install -e '.[{extra}]' in a source checkout, or pip install 'sciffusion[{extra}]' from a wheel"


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``; if it (or one of its own imports) is missing, raise :class:`MissingDependency`
    naming ``purpose``, the package and the install commands of ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise MissingDependency(f"{purpose} needs the '{package}' package ({err}); install it with: "
                                f"{install_hint(extra)}") from None
