"""What one pipeline run is asked to do, and the rules that turn the asking into settings.

:class:`RunSettings` holds what a user gives (Python keywords, command-line flags, a TOML
config file); :meth:`RunSettings.resolve` applies the precedence and checks everything once,
before any data is read, and returns :class:`ResolvedSettings`. The CLI and
:func:`astroinfer.run_pipeline` both go through it, so the same settings give the same run.

Precedence, highest first: explicit settings (keywords or flags), the config file, the
pipeline's default method, the engine's defaults. The config file (TOML)::

    method = "nested"        # optional
    seed = 1                 # optional
    num_samples = 2000       # optional

    [nuts]                   # options of each method (astroinfer.method_defaults(method))
    num_warmup = 500
    [nested]
    num_live_points = 1000
    [pipeline]               # the pipeline's own options

Only the chosen method's table is used, but every table is checked: an unknown key anywhere
is an error. ``num_chains`` and ``num_warmup`` given as counts win over the method table.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

from astroinfer.errors import InputError, OptionError, PipelineError

if TYPE_CHECKING:
    from astroinfer.pipeline import Pipeline

__all__ = ["RunSettings", "ResolvedSettings", "read_config", "check_pipeline_method", "check_pipeline_options",
           "check_execution", "CONFIG_KEYS", "EXECUTION_DEFAULTS", "DEFAULT_SEED", "DEFAULT_NUM_SAMPLES"]

CONFIG_KEYS = ("method", "seed", "num_samples")
#: Execution settings of batch pipelines: a Dask scheduler ("local" or an address; None runs
#: in this process) and whether to finish an interrupted run.
EXECUTION_DEFAULTS: dict[str, Any] = {"scheduler": None, "resume": False}
DEFAULT_SEED = 0
DEFAULT_NUM_SAMPLES = 1000
#: Counts that map onto method options of the same name.
_COUNTS = ("num_chains", "num_warmup")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The TOML config file at ``path`` as a dict; :class:`InputError` if it cannot be read."""
    file = Path(path)
    if not file.exists():
        raise InputError(f"{path}: no such file (the --config TOML file)")
    if file.is_dir():
        raise InputError(f"{path}: is a folder; --config expects a TOML file")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file; --config expects a TOML file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the file: {err.strerror or err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: invalid TOML: {_one_line(err)}") from None


def check_pipeline_method(pipeline: "Pipeline", method: str | None) -> str:
    """The method a run of ``pipeline`` uses: ``method``, or the pipeline's default."""
    method = pipeline.default_method if method is None else method
    if method not in pipeline.methods:
        raise PipelineError(f"--method {method} is not available for pipeline '{pipeline.name}'; "
                            f"it runs with {', '.join(pipeline.methods)}")
    return method


def check_pipeline_options(pipeline: "Pipeline", load_options: Mapping[str, Any],
                           which: str = "options") -> None:
    """Refuse keys that are not among the pipeline's ``options`` (or ``simulate_options``)."""
    known = {option.name for option in getattr(pipeline, which)}
    unknown = sorted(set(load_options) - known)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise PipelineError(f"unknown option(s) {', '.join(unknown)} for pipeline '{pipeline.name}'; "
                            f"its options are {listed}")


def check_execution(pipeline: "Pipeline", execution: Mapping[str, Any] | None) -> dict[str, Any]:
    """Execution settings merged with their defaults; only batch pipelines take non-defaults."""
    given = dict(execution or {})
    unknown = sorted(set(given) - set(EXECUTION_DEFAULTS))
    if unknown:
        raise PipelineError(f"unknown execution setting(s) {', '.join(unknown)}; expected "
                            f"{', '.join(EXECUTION_DEFAULTS)}")
    merged = {**EXECUTION_DEFAULTS, **given}
    if not pipeline.batch:
        changed = [k for k, v in merged.items() if v != EXECUTION_DEFAULTS[k]]
        if changed:
            raise PipelineError(f"--{changed[0]} applies only to batch pipelines (many independent "
                                f"problems); '{pipeline.name}' runs one inference")
    return merged



class MethodFamily(NamedTuple):
    """The methods a pipeline's runs choose from: the single-problem engine's
    (``engine.METHODS``) or, for a batch pipeline, the batch engine's (grid, nested, nuts)."""

    names: tuple[str, ...]
    defaults: Callable[[str], dict[str, Any]]
    validate: Callable[[str, dict[str, Any]], dict[str, Any]]


def method_family(pipeline: "Pipeline") -> MethodFamily:
    # The engine is imported only when a run is resolved or a config checked: listing
    # pipelines and failing on a bad name or flag must not wait for JAX to import.
    if pipeline.batch:
        from astroinfer.engine import batch

        return MethodFamily(tuple(batch.BATCH_METHODS), batch.method_defaults, batch.validate_options)
    from astroinfer.engine import METHODS, method_defaults, validate_options

    return MethodFamily(tuple(METHODS), method_defaults, validate_options)


def _check_table(where: str, key: str, value: Any, what: str, check: Callable[[dict], Any]) -> None:
    """A config table ``[key]`` of ``what``, checked by ``check``; raises InputError naming ``where``."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: '{key}' must be a table ([{key}]) of {what}")
    try:
        check(value)
    except (OptionError, PipelineError) as err:
        raise InputError(f"{where}: [{key}] {_one_line(err)}") from None


def _check_config(where: str, config: Mapping[str, Any], pipeline: "Pipeline") -> None:
    """Every key known and every table valid; raises :class:`InputError` naming ``where``."""
    methods, _, validate_options = method_family(pipeline)
    for key, value in config.items():
        if key == "pipeline":
            _check_table(where, key, value, "the pipeline's own options", lambda v: check_pipeline_options(pipeline, v))
        elif key in methods:
            _check_table(where, key, value, "method options", lambda v, m=key: validate_options(m, v))
        elif key not in CONFIG_KEYS:
            raise InputError(
                f"{where}: unknown key '{key}'; expected {', '.join(CONFIG_KEYS)} "
                f"or tables {', '.join(f'[{m}]' for m in (*methods, 'pipeline'))}"
            )
    if "method" in config and config["method"] not in methods:
        raise InputError(f"{where}: method must be one of {', '.join(methods)}, got {config['method']!r}")
    for key in ("seed", "num_samples"):
        if key in config:
            value, low = config[key], (0 if key == "seed" else 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a non-negative" if low == 0 else "a positive"
                raise InputError(f"{where}: {key} must be {kind} integer, got {value!r}")


@dataclass(frozen=True)
class ResolvedSettings:
    """Checked settings of one run: what :func:`astroinfer.pipeline.prepare` runs with."""

    method: str
    seed: int
    num_samples: int
    options: dict[str, Any]
    pipeline_options: dict[str, Any]
    execution: dict[str, Any]
    reuse_flow: bool


@dataclass
class RunSettings:
    """Settings of one pipeline run as a user gives them; None means "not given".

    ``options`` are method options (``num_live_points``, ...); ``pipeline_options`` the
    pipeline's own (``lines``, ``parallax_min``, ...); ``config`` a TOML file path or an
    already read dict; ``execution`` the batch settings (``scheduler``, ``resume``);
    ``retrain`` (flow-MC only) trains a new flow even when the output file holds one for the
    same model and data. ``labels`` name settings in error messages (the CLI passes its flags,
    so a message says ``--chains`` where Python users see ``num_chains``).
    """

    method: str | None = None
    seed: int | None = None
    num_samples: int | None = None
    num_chains: int | None = None
    num_warmup: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    config: str | os.PathLike | Mapping[str, Any] | None = None
    execution: dict[str, Any] = field(default_factory=dict)
    retrain: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def _label(self, name: str) -> str:
        return self.labels.get(name, name)

    def _config(self, pipeline: "Pipeline") -> dict[str, Any]:
        if self.config is None:
            return {}
        if isinstance(self.config, Mapping):
            config, where = dict(self.config), "config"
        else:
            config, where = read_config(self.config), str(self.config)
        _check_config(where, config, pipeline)
        return config

    def resolve(self, pipeline: "Pipeline") -> ResolvedSettings:
        """Apply the precedence and check every setting; raises before any data is read."""
        from astroinfer.engine import check_settings  # lazy: see method_family

        family = method_family(pipeline)
        check_pipeline_options(pipeline, self.pipeline_options)
        config = self._config(pipeline)
        method = check_pipeline_method(pipeline, self.method or config.get("method"))
        defaults = family.defaults(method)
        options = {**config.get(method, {}), **self.options}
        for count in _COUNTS:
            value = getattr(self, count)
            if value is None:
                continue
            if count not in defaults:
                raise OptionError(f"{self._label(count)} does not apply to method '{method}' (it has no {count} option)")
            options[count] = value
        seed = self.seed if self.seed is not None else config.get("seed", DEFAULT_SEED)
        num_samples = self.num_samples if self.num_samples is not None else config.get("num_samples", DEFAULT_NUM_SAMPLES)
        check_settings(method, seed, num_samples, options, validate=family.validate)
        execution = check_execution(pipeline, self.execution)
        if self.retrain and method != "flowmc":
            raise OptionError(f"{self._label('retrain')} applies to method 'flowmc' only (the method is '{method}')")
        return ResolvedSettings(
            method=method, seed=seed, num_samples=num_samples, options=options,
            pipeline_options={**config.get("pipeline", {}), **self.pipeline_options},
            execution=execution, reuse_flow=not self.retrain,
        )
