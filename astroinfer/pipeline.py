"""Pipelines: the protocol every domain pipeline follows, the registry, and ``run_pipeline``.

A pipeline is a :class:`Pipeline` object named in the ``astroinfer.pipelines`` entry-point
group (built-ins are also listed in :data:`BUILTIN`, so they are found even when the
installed entry-point metadata is stale). It bundles:

- ``load(path, **load_options) -> PipelineData``: read and validate an input file; every
  problem with the file raises :class:`InputError` naming the file, the column or option,
  and what was expected;
- ``model``: a plain NumPyro model function, called as ``model(**data.data)``;
- ``simulate(path, seed) -> truth``: write a synthetic input and record its truth;
- ``summarise(result, data)``: optional tables derived from a result;
- ``demo_input()``: the bundled demo input (``catalogs/``), generated into the user cache
  folder with ``simulate`` when the source tree's ``catalogs/`` is not there.

Optional hooks, for pipelines that need more than one ``engine.sample`` call:

- ``options`` / ``simulate_options``: the pipeline's own settings (:class:`PipelineOption`),
  given as ``load_options`` to ``load`` and as keywords to ``simulate``; on the command line
  they are ``--name`` flags after the pipeline name;
- ``sample(prepared, progress) -> Result``: runs the inference in place of the one
  ``engine.sample`` call (several models compared by evidence, per-object quantities drawn
  after the globals, batches of many problems) and returns the result; the run then
  records the input in its provenance and writes the result file (:meth:`PreparedRun.finish`),
  except for a ``batch`` pipeline, which writes its resumable result file as it goes;
- ``show(result) -> str``: text ``astroinfer show`` prints after the generic summary;
- ``plots``: extra ``astroinfer plot --kind`` names, each ``fn(result) -> Figure``;
- ``batch``: the pipeline runs many independent problems and accepts the execution
  settings (``scheduler``, ``resume``);
- ``methods`` / ``default_method``: the engine methods the pipeline accepts, and the one a
  run without a method uses.

This module imports no JAX/NumPyro at import time: the CLI lists and resolves pipelines,
and reports bad names, before anything heavy is loaded.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from astroinfer.errors import (
    InputError, OutputError, PipelineError, PipelineLoadError, UnknownPipelineError,
)
from astroinfer.settings import (
    EXECUTION_DEFAULTS, RunSettings, check_execution, check_pipeline_method, check_pipeline_options,
)

if TYPE_CHECKING:
    from astroinfer.result import Result

__all__ = [
    "Pipeline", "PipelineData", "PipelineOption", "parse_option_args", "parse_positive", "parse_non_negative",
    "parse_count", "parse_choice", "EXECUTION_DEFAULTS", "PipelineError", "InputError", "UnknownPipelineError",
    "OutputError", "PipelineLoadError", "get_pipeline", "list_pipelines", "pipeline_names", "run_pipeline",
    "prepare", "PreparedRun", "RunSettings", "check_pipeline_options", "check_pipeline_method", "check_execution", "check_output_path", "user_cache_dir",
    "ENTRY_POINT_GROUP", "BUILTIN",
]

ENTRY_POINT_GROUP = "astroinfer.pipelines"
#: Built-in pipelines, ``name -> "module:attribute"``; the entry points of the same names
#: point at the same objects.
BUILTIN: dict[str, str] = {
    "line-fit": "astroinfer.pipelines.line_fit:PIPELINE",
    "ionosphere": "astroinfer.pipelines.ionosphere:PIPELINE",
    "spectral-lines": "astroinfer.pipelines.spectral_lines:PIPELINE",
    "gaia-cluster": "astroinfer.pipelines.gaia_cluster:PIPELINE",
}


@dataclass
class PipelineData:
    """A validated input: ``data`` are the model's keyword arguments, ``metadata`` describes them."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def user_cache_dir() -> Path:
    """``$ASTROINFER_CACHE_DIR``, else ``$XDG_CACHE_HOME/astroinfer``, else ``~/.cache/astroinfer``."""
    explicit = os.environ.get("ASTROINFER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "astroinfer"


@dataclass(frozen=True)
class PipelineOption:
    """One of a pipeline's own settings.

    In Python it is the keyword ``name`` (of ``load_options`` for a run, of ``simulate`` for
    a simulation); on the command line it is ``--name`` with dashes for underscores
    (``--parallax-min 0.2``). ``parse`` turns the command-line text into the value and raises
    ``ValueError`` saying what was expected; a ``flag`` takes no value and means ``True``.
    ``default`` is for help and documentation: the function's own default applies when the
    option is not given.
    """

    name: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    flag: bool = False

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _parse_finite(text: str, accept: Callable[[float], bool], what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None
    if not (math.isfinite(value) and accept(value)):
        raise ValueError(f"expected {what}, got {text!r}")
    return value


def parse_positive(text: str) -> float:
    """A finite number > 0 (a ``PipelineOption.parse``)."""
    return _parse_finite(text, lambda value: value > 0, "a positive number")


def parse_non_negative(text: str) -> float:
    """A finite number >= 0 (a ``PipelineOption.parse``)."""
    return _parse_finite(text, lambda value: value >= 0, "a number >= 0")


def parse_count(minimum: int = 0) -> Callable[[str], int]:
    """A ``PipelineOption.parse`` for whole numbers >= ``minimum``."""
    what = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise ValueError(f"expected {what}, got {value}")
        return value

    return parse


def parse_choice(*allowed: str) -> Callable[[str], str]:
    """A ``PipelineOption.parse`` for one of ``allowed`` (case and surrounding blanks ignored)."""

    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    return parse


def parse_option_args(pipeline_name: str, options: tuple[PipelineOption, ...], args: list[str]) -> dict[str, Any]:
    """Command-line words (``--name value``, ``--name=value``, ``--flag``) -> option values.

    Raises :class:`PipelineError` naming the option and what was expected.
    """
    by_flag = {option.cli_flag: option for option in options}
    known = ", ".join(sorted(by_flag)) or "none"
    values: dict[str, Any] = {}
    words = list(args)
    while words:
        word = words.pop(0)
        flag, has_value, text = word.partition("=")
        if flag not in by_flag:
            what = "unexpected argument" if not word.startswith("-") else "no such option"
            raise PipelineError(f"{what} '{word}' for pipeline '{pipeline_name}'; its own options are {known}")
        option = by_flag[flag]
        if option.flag:
            if has_value:
                raise PipelineError(f"option {flag} takes no value")
            values[option.name] = True
            continue
        if not has_value:
            if not words:
                raise PipelineError(f"option {flag} requires a value ({option.help})")
            text = words.pop(0)
        try:
            values[option.name] = option.parse(text)
        except ValueError as err:
            raise PipelineError(f"option {flag}: {err}") from None
    return values


@dataclass(frozen=True)
class Pipeline:
    """One domain pipeline; see the module docstring for the meaning of each part.

    ``demo_file`` is the demo input's file name in ``catalogs/`` (its truth sits beside it);
    ``demo_seed`` is the seed ``simulate`` made it with, so it can be made again anywhere.
    ``module_file`` is the defining module's ``__file__``, used to find the source tree.
    """

    name: str
    description: str
    load: Callable[..., PipelineData]
    model: Callable[..., Any]
    simulate: Callable[..., dict[str, Any]]
    summarise: Callable[["Result", PipelineData], Any] | None = None
    demo_file: str | None = None
    demo_seed: int = 0
    module_file: str | None = None
    options: tuple[PipelineOption, ...] = ()
    simulate_options: tuple[PipelineOption, ...] = ()
    sample: Callable[["PreparedRun", bool], "Result"] | None = None
    show: Callable[["Result"], str] | None = None
    plots: Mapping[str, Callable[["Result"], Any]] = field(default_factory=dict)
    batch: bool = False
    methods: tuple[str, ...] = ("nuts", "nested", "flowmc")
    default_method: str = "nuts"

    def demo_search_path(self) -> list[Path]:
        """Folders searched for the demo input, in order."""
        folders = []
        if self.module_file:
            here = Path(self.module_file).resolve().parent
            # Source tree: pipelines/<name>/../../catalogs (a package) or pipelines/../catalogs.
            folders.extend(parent / "catalogs" for parent in here.parents[:2])
            folders.append(here)  # installed as package data next to the module
        return folders

    def demo_input(self) -> Path:
        """Path of the demo input: the bundled file, else one generated into the cache."""
        if self.demo_file is None:
            raise InputError(f"pipeline '{self.name}' has no demo input; give an INPUT file")
        for folder in self.demo_search_path():
            candidate = folder / self.demo_file
            if candidate.is_file():
                return candidate
        cached = user_cache_dir() / "demos" / self.demo_file
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            self.simulate(cached, self.demo_seed)
        return cached


# -- registry ------------------------------------------------------------------------
_loaded: dict[str, Pipeline] = {}


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken metadata must not hide the built-ins
        return {}
    return {ep.name: ep for ep in found}


def _specs() -> dict[str, str | metadata.EntryPoint]:
    specs: dict[str, str | metadata.EntryPoint] = dict(_entry_points())
    specs.update(BUILTIN)  # a built-in name always means the built-in
    return specs


def pipeline_names() -> list[str]:
    """Names of every registered pipeline (no pipeline module is imported)."""
    return sorted(_specs())


def _load_spec(name: str, spec: str | metadata.EntryPoint) -> Pipeline:
    try:
        if isinstance(spec, str):
            module_name, _, attribute = spec.partition(":")
            obj = getattr(import_module(module_name), attribute)
        else:
            obj = spec.load()
    except Exception as err:
        where = spec if isinstance(spec, str) else spec.value
        raise PipelineLoadError(f"pipeline '{name}' ({where}) failed to load: {type(err).__name__}: {err}") from err
    if not isinstance(obj, Pipeline):
        raise PipelineLoadError(f"pipeline '{name}' is a {type(obj).__name__}, not an astroinfer.pipeline.Pipeline")
    return obj


def get_pipeline(name: str) -> Pipeline:
    """The pipeline registered as ``name``; :class:`UnknownPipelineError` lists the known ones."""
    if name in _loaded:
        return _loaded[name]
    specs = _specs()
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise UnknownPipelineError(f"unknown pipeline '{name}'; known pipelines: {known}")
    pipeline = _load_spec(name, specs[name])
    _loaded[name] = pipeline
    return pipeline


def list_pipelines() -> list[Pipeline]:
    """Every registered pipeline that loads, sorted by name (failures are warned about)."""
    found = []
    for name in pipeline_names():
        try:
            found.append(get_pipeline(name))
        except PipelineLoadError as err:
            warnings.warn(str(err), RuntimeWarning, stacklevel=2)
    return found


# -- running -------------------------------------------------------------------------
def check_output_path(out: str | os.PathLike, input_path: str | os.PathLike | None = None) -> Path:
    """Refuse an output path that cannot be written, before any sampling is done."""
    path = Path(out)
    if path.is_dir():
        raise OutputError(f"{out}: is a folder; expected a result file name such as run.h5")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputError(f"{out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{out}: folder {folder} is not writable")
    if input_path is not None and path.exists() and Path(input_path).exists():
        if path.resolve() == Path(input_path).resolve():
            raise OutputError(f"{out}: is the input file; choose another output name")
    return path


@dataclass
class PreparedRun:
    """A run whose settings, input and output path have been checked; :meth:`sample` runs it.

    ``options`` are the method options and ``load_options`` the pipeline's own, both as given
    after :class:`RunSettings` resolved them; ``flow_reused`` says whether a flow stored in
    ``out`` is reused (flow-MC).
    """

    pipeline: Pipeline
    input_path: Path
    loaded: PipelineData
    out: Path | None
    method: str
    seed: int
    num_samples: int
    options: dict[str, Any]
    load_options: dict[str, Any]
    execution: dict[str, Any] = field(default_factory=lambda: dict(EXECUTION_DEFAULTS))
    flow_reused: bool = False

    def sample(self, progress: bool = False) -> "Result":
        """Sample (the pipeline's own ``sample`` hook if it has one), then :meth:`finish`."""
        if self.pipeline.sample is None:
            result = self.sample_model(progress=progress)
        else:
            result = self.pipeline.sample(self, progress)
        if self.pipeline.batch:
            # A batch pipeline streams its chunks into the result file as they finish (so an
            # interrupted run resumes) and records its provenance there itself.
            return result
        return self.finish(result)

    def sample_model(self, progress: bool = False, **overrides: Any) -> "Result":
        """One ``engine.sample`` of the pipeline's model on the loaded data with this run's
        method, seed and options; ``overrides`` replace any of them (``data``, ``model``,
        ``method``, ``seed``, ``num_samples`` or method options)."""
        from astroinfer.engine import sample
        from astroinfer.store import record_input

        settings: dict[str, Any] = {
            "model": self.pipeline.model, "data": self.loaded.data, "method": self.method,
            "seed": self.seed, "num_samples": self.num_samples, **self.options,
        }
        settings.update(overrides)
        result = sample(progress=progress, **settings)
        # The engine knows no pipeline: the run's pipeline and input file are recorded here.
        record_input(result.provenance, pipeline=self.pipeline.name, input_path=self.input_path)
        return result

    def reuse_stored_flow(self) -> bool:
        """For ``method="flowmc"``: when ``out`` already holds a flow trained on this model
        and data (same fingerprint) and no ``reuse_flow`` was given, reuse it, so a rerun
        skips training. Returns whether it will be reused."""
        if self.method != "flowmc" or self.out is None or self.options.get("reuse_flow") is not None:
            return False
        from astroinfer.engine import validate_options
        from astroinfer.engine.flowmc import stored_flow_matches

        resolved = validate_options("flowmc", self.options)
        if not stored_flow_matches(self.out, self.pipeline.model, self.loaded.data, resolved):
            return False
        self.options["reuse_flow"] = str(self.out)
        self.flow_reused = True
        return True

    def finish(self, result: "Result") -> "Result":
        """Record the input's metadata and options in the provenance; save to ``out`` if given."""
        result.provenance["input_metadata"] = dict(self.loaded.metadata)
        if self.load_options:
            result.provenance["load_options"] = dict(self.load_options)
        if self.out is not None:
            result.save(self.out)
        return result


def prepare(name: str, input: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
            settings: RunSettings | None = None) -> PreparedRun:
    """Check everything a run needs, cheapest first, and load the input; sample nothing.

    ``settings`` (a :class:`RunSettings`) are resolved against the pipeline: its default
    method, a config file's settings, the engine's defaults. A stored flow in ``out`` is
    reused for flow-MC unless ``settings.retrain``.
    """
    pipeline = get_pipeline(name)
    resolved = (settings or RunSettings()).resolve(pipeline)
    input_path = Path(input) if input is not None else pipeline.demo_input()
    out_path = check_output_path(out, input_path) if out is not None else None
    loaded = pipeline.load(input_path, **resolved.pipeline_options)
    prepared = PreparedRun(pipeline, input_path, loaded, out_path, resolved.method, resolved.seed,
                           resolved.num_samples, dict(resolved.options), dict(resolved.pipeline_options),
                           resolved.execution)
    if resolved.reuse_flow:
        prepared.reuse_stored_flow()
    return prepared


def run_pipeline(
    name: str,
    input: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    method: str | None = None,
    seed: int | None = None,
    *,
    num_samples: int | None = None,
    progress: bool = False,
    load_options: Mapping[str, Any] | None = None,
    execution: Mapping[str, Any] | None = None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    retrain: bool = False,
    **options: Any,
) -> "Result":
    """Load ``input`` with pipeline ``name`` (its demo input if None), sample, save to ``out``.

    ``method`` None means the config's method, else the pipeline's default; ``seed`` and
    ``num_samples`` None mean the config's, else 0 and 1000. ``config`` is a TOML file (or a
    dict of the same layout) as ``astroinfer run --config`` takes; explicit arguments win over
    it. ``options`` are method options (``num_warmup``, ``num_live_points``, ...). For flow-MC
    a flow stored in ``out`` for the same model and data is reused unless ``retrain``.

    Bad settings raise ``astroinfer.OptionError`` and a bad input :class:`InputError`, both
    before any sampling; ``out`` (if given) is written atomically, so a failing run never
    leaves a partial file and never destroys an existing one. Returns the ``Result``.
    """
    settings = RunSettings(method=method, seed=seed, num_samples=num_samples, options=dict(options),
                           pipeline_options=dict(load_options or {}), config=config,
                           execution=dict(execution or {}), retrain=retrain)
    return prepare(name, input, out, settings).sample(progress=progress)
