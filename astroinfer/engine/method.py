"""The method protocol: what every single-problem inference method (nuts, nested, flowmc) is.

A method is an object with

- ``name``, ``defaults`` (every option with its default) and ``choices`` (the allowed values
  of options that take one of a few);
- ``check(options) -> resolved``: defaults merged with ``options``, unknown keys and wrongly
  typed values refused with :class:`~astroinfer.errors.OptionError`;
- ``build(bridge, resolved) -> built``: the method's compiled pieces for the model of a
  :class:`~astroinfer.engine.model.ModelBridge`, pure functions that take the problem's data
  as their first argument (:class:`DataFunction`), nothing run yet;
- ``run(built, data, *, seed, num_samples, progress=False, data_as_constants=False)``: one
  inference of ``data`` with those pieces, returning a
  :class:`~astroinfer.engine.run.MethodRun`.

So a second ``run`` of the same ``built`` on new data of the same structure and shapes
compiles nothing new; :func:`build_for` keeps the ``built`` of recent structures, so a caller
with many problems (spectra of one size, say) need not. ``data_as_constants=True`` compiles the data into the code instead (a
new compilation per run); :func:`astroinfer.engine.sample` uses it, because XLA folds
data-dependent terms such as a prior scaled from the data at compile time and rounds them
differently from the same terms computed at run time, so this keeps the draws of a seed
what they were before methods took data as an argument.

The data convention: the array leaves of ``data`` (NumPy and JAX arrays, NumPy scalars) are
dynamic, traced arguments of the compiled code; every other value (ints, floats, strings,
bools, None, tuples of them) is static structure, fixed when the code is compiled. Two data
dicts share compiled code when their structures (:func:`split_data`) are equal and their
arrays have the same shapes and dtypes.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from astroinfer.engine.model import ModelBridge
from astroinfer.errors import ModelError, OptionError

__all__ = [
    "Method", "OptionChecks", "DataFunction", "DataStructure", "split_data", "merge_data",
    "build_for", "is_array", "is_count",
]


def is_count(value: Any) -> bool:
    """A Python or NumPy integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_array(value: Any) -> bool:
    """Whether a leaf of the data is dynamic (traced): NumPy and JAX arrays and NumPy scalars."""
    return isinstance(value, (np.ndarray, np.generic, jax.Array))


class DataStructure(NamedTuple):
    """The static part of a data dict: its tree shape and its non-array leaves by position."""

    treedef: Any
    static: tuple[tuple[int, Hashable], ...]


def split_data(data: Mapping[str, Any]) -> tuple[DataStructure, tuple[Any, ...]]:
    """(structure, array leaves) of ``data``; :func:`merge_data` puts them back together."""
    leaves, treedef = jax.tree_util.tree_flatten(dict(data))
    static = tuple((i, leaf) for i, leaf in enumerate(leaves) if not is_array(leaf))
    arrays = tuple(leaf for leaf in leaves if is_array(leaf))
    return DataStructure(treedef, static), arrays


def merge_data(structure: DataStructure, arrays: tuple[Any, ...]) -> dict[str, Any]:
    """The data dict of ``structure`` with ``arrays`` (traced or not) at its array leaves."""
    fixed = dict(structure.static)
    dynamic = iter(arrays)
    leaves = [fixed[i] if i in fixed else next(dynamic) for i in range(structure.treedef.num_leaves)]
    return jax.tree_util.tree_unflatten(structure.treedef, leaves)


class DataFunction:
    """``fn(data, *args)`` compiled once for one data structure, the arrays of ``data`` traced.

    ``compile_with`` turns ``g(arrays, *args)`` into compiled code: ``jax.jit`` by default,
    ``equinox.filter_jit`` where an argument holds non-array parts (a flow), or a vmap/pmap
    over chains. Calling with data of another structure raises :class:`ModelError`: that
    needs a new ``build``.
    """

    def __init__(self, fn: Callable, structure: DataStructure, compile_with: Callable = jax.jit):
        self.fn = fn
        self.structure = structure
        self._compile = compile_with
        self._compiled = compile_with(lambda arrays, *args: fn(merge_data(structure, arrays), *args))

    def __call__(self, data: Mapping[str, Any], *args: Any) -> Any:
        structure, arrays = split_data(data)
        if structure != self.structure:
            raise ModelError(
                "the data differ in structure (keys or non-array values) from the data the method "
                "was built for; build it again for these data"
            )
        return self._compiled(arrays, *args)

    def on(self, data: Mapping[str, Any], *, as_constants: bool = False) -> Callable:
        """``fn`` with ``data`` fixed, as ``g(*args)``: the data passed to the compiled code,
        or with ``as_constants`` compiled into new code for these values."""
        if as_constants:
            return self._compile(lambda *args: self.fn(data, *args))
        return lambda *args: self(data, *args)


@runtime_checkable
class Method(Protocol):
    """The protocol every single-problem method in ``astroinfer.engine.METHODS`` follows."""

    name: str
    defaults: Mapping[str, Any]
    choices: Mapping[str, tuple]

    def check(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults merged with ``options``; bad keys and values raise OptionError."""

    def build(self, bridge: Any, options: dict[str, Any]) -> Any:
        """Compiled pieces for ``bridge``'s model, data as their first argument."""

    def run(self, built: Any, data: Mapping[str, Any], *, seed: int, num_samples: int,
            progress: bool = False, data_as_constants: bool = False) -> Any:
        """One inference of ``data`` with ``built``; returns a MethodRun."""


_BUILT: OrderedDict[Hashable, Any] = OrderedDict()
_MAX_BUILT = 32  # each holds compiled code and one problem's data


def build_for(method: Method, model: Callable, data: Mapping[str, Any], options: Mapping[str, Any]) -> Any:
    """``method.build`` for ``model`` on data of this structure and these array shapes and
    dtypes, with ``options`` checked; made once and kept for the most recent structures, so
    ``method.run(build_for(...), data, ...)`` over many problems compiles once per structure."""
    resolved = method.check(options)
    structure, arrays = split_data(data)
    shapes = tuple((a.shape, a.dtype) for a in arrays)
    key = (method.name, model, structure, shapes, tuple(sorted(resolved.items())))
    if key in _BUILT:
        _BUILT.move_to_end(key)
    else:
        _BUILT[key] = method.build(ModelBridge(model, dict(data)), resolved)
        if len(_BUILT) > _MAX_BUILT:
            _BUILT.popitem(last=False)
    return _BUILT[key]


class OptionChecks:
    """The option rules shared by every method: ``check`` with the messages users see.

    Subclasses set ``name``, ``defaults`` and ``choices`` and may override
    :meth:`check_together` for constraints between options.
    """

    name: str = ""
    defaults: Mapping[str, Any] = {}
    choices: Mapping[str, tuple] = {}

    def check(self, options: Mapping[str, Any]) -> dict[str, Any]:
        defaults = dict(self.defaults)
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise OptionError(
                f"unknown option(s) for method '{self.name}': {', '.join(unknown)}; "
                f"valid options are {', '.join(sorted(defaults))}"
            )
        merged = {**defaults, **options}
        for name, value in options.items():
            converted = _checked_value(name, value, defaults[name])
            if converted is not None:
                merged[name] = converted
        self.check_together(merged)
        for name, allowed in self.choices.items():
            if merged[name] not in allowed:
                raise OptionError(
                    f"option {name} must be one of {', '.join(map(str, allowed))}, got {merged[name]!r}"
                )
        return merged

    def check_together(self, options: dict[str, Any]) -> None:
        """Constraints between a method's options (none by default)."""


def _checked_value(name: str, value: Any, default: Any) -> Any:
    """Refuse ``value`` unless it has the type of ``default``; a float option's value is
    returned as a float (None otherwise: keep the value as given)."""
    if is_count(default) or (default is None and name.startswith("num_")):
        if value is None and default is None:
            return None
        if not is_count(value) or value < 1:
            raise OptionError(f"option {name} must be a positive integer, got {value!r}")
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise OptionError(f"option {name} must be true or false, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise OptionError(f"option {name} must be a positive number, got {value!r}")
        return float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise OptionError(f"option {name} must be a string, got {value!r}")
    return None
