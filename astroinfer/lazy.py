"""Names of a pipeline package's JAX modules, imported when first used.

The CLI imports every pipeline package to list them, which must import numpy only; the
modules that need JAX (the model, the ``sample`` hook, plots) are imported when one of their
names is first used. :class:`OnFirstUse` stands for one function the package needs as a
callable at import time (``Pipeline(model=..., sample=...)``); :func:`lazy_names` gives the
module ``__getattr__`` and ``__dir__`` (PEP 562) for the rest.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["OnFirstUse", "lazy_names"]


class OnFirstUse:
    """Function ``name`` of module ``package.module``, imported when first called or inspected.

    ``__wrapped__`` is the real function, so ``inspect`` (flow-MC's model fingerprint reads
    the model's source) sees through the stand-in.
    """

    def __init__(self, package: str, module: str, name: str):
        self.__module__, self.__name__, self.__qualname__ = f"{package}.{module}", name, name
        self._function: Callable[..., Any] | None = None

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        if self._function is None:
            self._function = getattr(importlib.import_module(self.__module__), self.__name__)
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<function {self.__module__}.{self.__name__}>"


def lazy_names(package: str, names_by_module: Mapping[str, tuple[str, ...]],
               package_globals: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, which import ``package.module`` the
    first time one of its ``names_by_module[module]`` is asked for."""
    module_of = {name: module for module, names in names_by_module.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(set(package_globals) | set(module_of))

    return __getattr__, __dir__
