"""The ``astroinfer`` command line: a thin layer over the Python API.

::

    astroinfer pipelines
    astroinfer run PIPELINE [INPUT] [-o OUT.h5] [--method nuts|nested|flowmc] [--seed N]
                   [--config options.toml] [--chains N] [--samples N] [--warmup N] [--quiet]
    astroinfer show OUT.h5
    astroinfer plot OUT.h5 [--kind corner|trace] [-o FIG.png]
    astroinfer simulate PIPELINE -o FILE [--seed N]

Exit status: 0 success; 2 bad input or usage (one line on stderr, no traceback, no output
file left behind); 1 an internal error (with its traceback, to report).

JAX, NumPyro and the engine are imported inside the commands, after :func:`main` has asked
XLA for one CPU device per core (up to 2) so that NUTS chains run in parallel.

The ``--config`` TOML file and the precedence of settings are described in
:mod:`astroinfer.settings`; the CLI and :func:`astroinfer.run_pipeline` share them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from astroinfer.files import atomic_write

PROG = "astroinfer"
GENERIC_PLOT_KINDS = ("corner", "trace", "flow")
#: Settings named by their flags in error messages.
FLAG_LABELS = {"num_chains": "--chains", "num_warmup": "--warmup", "retrain": "--retrain"}
MAX_DEVICES = 2


class CLIError(click.ClickException):
    """A user error: one line on stderr, exit status 2."""

    exit_code = 2


def _fail(message: str) -> NoReturn:
    raise CLIError(message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def configure_jax_devices(environ: dict[str, str] | None = None) -> None:
    """Ask XLA for ``min(2, cpu_count)`` host devices unless the user set a device count.

    The same as ``numpyro.set_host_device_count``, without importing NumPyro; it only takes
    effect before JAX creates its CPU backend, so it runs first thing in :func:`main`.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    count = max(1, min(MAX_DEVICES, os.cpu_count() or 1))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def configure_compilation_cache(environ: dict[str, str] | None = None) -> None:
    """JAX's persistent compilation cache under the user cache folder, so that a second run
    of the same pipeline starts without recompiling. JAX reads these variables when it is
    imported; a user's own setting wins."""
    from astroinfer.pipeline import user_cache_dir

    env = os.environ if environ is None else environ
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(user_cache_dir() / "jax"))
    # Many of a run's compilations are small; cache those too (JAX's default is 1 s).
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or usage (exit 2)."""
    from astroinfer.errors import USER_ERRORS

    return USER_ERRORS


def _quiet_arviz_logging() -> None:
    import logging

    logging.getLogger("arviz").setLevel(logging.ERROR)  # e.g. "Shape validation failed" for one chain


def _echo_err(message: str) -> None:
    click.echo(f"{PROG}: {message}", err=True)


# -- commands --------------------------------------------------------------------------
@click.group(
    name=PROG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    no_args_is_help=True,
)
@click.version_option(package_name="astroinfer", prog_name=PROG)
def cli() -> None:
    """Bayesian inference for astronomy: NUTS, nested sampling and flow-MC on NumPyro models.

    \b
    Try the bundled demo:
      astroinfer run line-fit
      astroinfer show line-fit.h5
    """


@cli.command("pipelines")
@click.argument("name", required=False)
def pipelines_command(name) -> None:
    """List the available pipelines, or describe pipeline NAME and its own options."""
    from astroinfer.pipeline import PipelineLoadError, get_pipeline, pipeline_names

    if name is not None:
        _describe_pipeline(get_pipeline(name))
        return
    names = pipeline_names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        try:
            description = get_pipeline(name).description
        except PipelineLoadError as err:
            description = f"(failed to load: {_one_line(err)})"
        click.echo(f"{name.ljust(width)}  {description}")


def _describe_pipeline(pipe) -> None:
    click.echo(f"{pipe.name}: {pipe.description}")
    for title, options in (("run options", pipe.options), ("simulate options", pipe.simulate_options)):
        if not options:
            continue
        click.echo(f"\n{title}:")
        for option in options:
            usage = option.cli_flag + ("" if option.flag else " VALUE")
            default = "" if option.default is None else f" [default: {option.default}]"
            click.echo(f"  {usage:28s} {option.help}{default}")
    click.echo(f"\nmethods: {', '.join(pipe.methods)} [default: {pipe.default_method}]")
    kinds = [*GENERIC_PLOT_KINDS, *pipe.plots]
    click.echo(f"\nplot kinds: {', '.join(kinds)}")
    if pipe.batch:
        click.echo("batch pipeline: accepts --scheduler local|ADDRESS and --resume")


def _print_summary(summary: Any) -> None:
    if not isinstance(summary, dict):
        summary = {"summary": summary}
    for name, value in summary.items():
        if isinstance(value, str):
            click.echo(value)
        elif hasattr(value, "to_string"):
            click.echo(f"{name}:")
            click.echo(value.to_string())


@cli.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("pipeline")
@click.argument("input", required=False)
@click.option("-o", "--out", "out", metavar="OUT.h5", help="Result file [default: PIPELINE.h5 here].")
@click.option("--method", default=None, metavar="METHOD",
              help="Inference method: nuts, nested, flowmc, or one a pipeline adds (`astroinfer pipelines "
                   "PIPELINE` lists them) [default: the config's method, else the pipeline's].")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Random seed [default: 0].")
@click.option("--config", "config_path", metavar="OPTIONS.toml", help="TOML file of settings and method options.")
@click.option("--chains", type=click.IntRange(min=1), default=None, help="Chains (num_chains; nuts, flowmc).")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Posterior draws per chain (equally weighted draws for nested) [default: 1000].")
@click.option("--warmup", type=click.IntRange(min=1), default=None, help="Warmup steps (num_warmup; nuts).")
@click.option("--scheduler", default=None, metavar="local|ADDRESS",
              help="Batch pipelines: run chunks on a Dask LocalCluster (local) or an existing cluster.")
@click.option("--resume", is_flag=True, help="Batch pipelines: finish an interrupted run into the same OUT.h5.")
@click.option("--retrain", is_flag=True,
              help="flowmc: train a new flow even if OUT.h5 holds one for this model and data.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary; warnings still show.")
@click.pass_context
def run_command(ctx, pipeline, input, out, method, seed, config_path, chains, samples, warmup,
                scheduler, resume, retrain, quiet) -> None:
    """Run PIPELINE on INPUT (the pipeline's demo input if omitted) and save the result.

    The pipeline's own options (`astroinfer pipelines PIPELINE` lists them) go after the
    pipeline name, e.g. `astroinfer run spectral-lines spec.fits --lines auto`.

    \b
    OPTIONS.toml holds run settings and each method's options:
      method = "nested"       # --method, --seed and --samples win over these
      seed = 1
      num_samples = 2000
      [nested]                # a table per method: nuts, nested, flowmc
      num_live_points = 1000  # (astroinfer.method_defaults(method) lists them)
      [pipeline]              # the pipeline's own options; command-line flags win
    """
    from astroinfer.pipeline import RunSettings, get_pipeline, parse_option_args

    pipe = get_pipeline(pipeline)  # an unknown name fails before anything else is read
    if input is not None and input.startswith("--"):  # a pipeline option, not a file name
        ctx.args.insert(0, input)
        input = None
    settings = RunSettings(
        method=method, seed=seed, num_samples=samples, num_chains=chains, num_warmup=warmup,
        pipeline_options=parse_option_args(pipeline, pipe.options, ctx.args), config=config_path,
        execution={"scheduler": scheduler, "resume": resume}, retrain=retrain, labels=FLAG_LABELS,
    )
    _run(pipeline, input, out or f"{pipeline}.h5", settings, quiet)


def _run(pipeline: str, input: str | None, out: str, settings, quiet: bool) -> None:
    import warnings

    from astroinfer.engine import ConvergenceWarning
    from astroinfer.pipeline import prepare

    prepared = prepare(pipeline, input, out, settings)
    pipe, data = prepared.pipeline, prepared.loaded
    if not quiet:
        source = "" if input is not None else " (demo input)"
        _echo_err(f"{pipeline} on {prepared.input_path}{source} with {prepared.method}, "
                  f"seed {prepared.seed} -> {out}")
        if prepared.flow_reused:
            _echo_err(f"reusing the flow stored in {out} (same model and data; --retrain trains a new one)")
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # printed below, one line each
        result = prepared.sample(progress=not quiet)
    elapsed = time.perf_counter() - started
    for message in result.diagnostics.get("warnings", []):
        _echo_err(f"warning: {_one_line(message)}")
    if quiet:
        return
    if pipe.summarise is not None:
        _quiet_arviz_logging()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _print_summary(pipe.summarise(result, data))
        except Exception as err:  # the result is saved; a summary failure is not fatal
            _echo_err(f"warning: could not summarise the result: {type(err).__name__}: {_one_line(err)}")
    if result.log_evidence is not None:
        click.echo(f"log-evidence: {result.log_evidence:.6f} +- {result.log_evidence_err:.6f}")
    _echo_err(f"wrote {out} ({elapsed:.1f} s)")


def _load_result(path: str):
    from astroinfer.result import load

    return load(path)


def _scalar_variables(idata, var_names=(), max_size: int = 20) -> tuple[list[str], list[str]]:
    posterior = idata.posterior
    if var_names:
        missing = [v for v in var_names if v not in posterior.data_vars]
        if missing:
            _fail(f"no posterior variable(s) {', '.join(missing)}; the file has "
                  f"{', '.join(posterior.data_vars)}")
        return list(var_names), []
    shown, hidden = [], []
    for name, values in posterior.data_vars.items():
        per_draw = int(values.size // max(1, values.sizes.get("chain", 1) * values.sizes.get("draw", 1)))
        (shown if per_draw <= max_size else hidden).append(name)
    return shown, hidden


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@cli.command("show")
@click.argument("result_file", metavar="OUT.h5")
@click.option("--var", "var_names", multiple=True, help="Only these posterior variables (repeatable).")
def show_command(result_file, var_names) -> None:
    """Print a result's posterior summary, diagnostics, log-evidence and provenance."""
    import warnings

    result = _load_result(result_file)
    prov = result.provenance
    click.echo(f"result: {result_file}")
    click.echo(f"method: {result.method}" + (f"   pipeline: {prov['pipeline']}" if prov.get("pipeline") else ""))
    shown, hidden = _scalar_variables(result.idata, var_names)
    click.echo("\nposterior summary:")
    if shown:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _quiet_arviz_logging()
            table = result.summary(var_names=shown)
        click.echo(table.to_string())
    if hidden:
        click.echo(f"({len(hidden)} larger variable(s) not shown: {', '.join(hidden)}; use --var NAME)")

    if result.log_evidence is not None:
        click.echo(f"\nlog-evidence: {result.log_evidence:.6f} +- {result.log_evidence_err:.6f}")

    diag = result.diagnostics
    click.echo("\ndiagnostics:")
    for key in sorted(diag):
        value = diag[key]
        if key == "warnings" or isinstance(value, (dict, list)):
            continue
        click.echo(f"  {key}: {_format_value(value)}")
    warnings_list = diag.get("warnings", [])
    if warnings_list:
        click.echo("warnings:")
        for message in warnings_list:
            click.echo(f"  warning: {_one_line(message)}")
    else:
        click.echo("warnings: none")

    click.echo("\nprovenance:")
    for key in ("astroinfer_version", "pipeline", "method", "seed", "input_path", "input_sha256",
                "command_line", "started_utc", "finished_utc", "python", "platform"):
        if key in prov:
            click.echo(f"  {key}: {prov[key]}")
    options = prov.get("options") or {}
    if options:
        click.echo("  options: " + ", ".join(f"{k}={v}" for k, v in sorted(options.items())))
    versions = prov.get("versions") or {}
    if versions:
        click.echo("  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    pipe = _result_pipeline(result)
    if pipe is not None and pipe.show is not None:
        click.echo(f"\n{pipe.name}:")
        click.echo(pipe.show(result))


def _result_pipeline(result):
    """The pipeline that made ``result``, or None (none recorded, or not installed here)."""
    from astroinfer.pipeline import PipelineError, PipelineLoadError, get_pipeline

    name = result.provenance.get("pipeline")
    if not name:
        return None
    try:
        return get_pipeline(name)
    except (PipelineError, PipelineLoadError):
        return None


@cli.command("plot")
@click.argument("result_file", metavar="OUT.h5")
@click.option("--kind", default="corner", show_default=True,
              help="corner/trace of the posterior; flow: flow-MC training loss and acceptance per loop; "
                   "or a kind of the result's pipeline (astroinfer pipelines NAME lists them).")
@click.option("-o", "--out", "out", metavar="FIG.png", help="Figure file [default: OUT.<kind>.png].")
@click.option("--var", "var_names", multiple=True, help="Only these posterior variables (repeatable).")
def plot_command(result_file, kind, out, var_names) -> None:
    """Plot a result: a corner plot of the posterior, the chains' traces, or flow-MC's training."""
    import matplotlib

    matplotlib.use("Agg")
    out = out or str(Path(result_file).with_suffix(f".{kind}.png"))
    folder = Path(out).resolve().parent
    if not folder.is_dir():
        _fail(f"{out}: folder {folder} does not exist")
    if kind not in GENERIC_PLOT_KINDS:  # a kind no pipeline knows fails before the file is read
        from astroinfer.pipeline import list_pipelines

        every_kind = sorted({k for p in list_pipelines() for k in p.plots})
        if kind not in every_kind:
            _fail(f"--kind {kind!r}: expected one of {', '.join((*GENERIC_PLOT_KINDS, *every_kind))}")
    result = _load_result(result_file)
    pipe = _result_pipeline(result)
    pipeline_kinds = dict(pipe.plots) if pipe is not None else {}
    if kind not in GENERIC_PLOT_KINDS and kind not in pipeline_kinds:
        _fail(f"--kind {kind!r} is not a plot of this result; expected one of "
              f"{', '.join((*GENERIC_PLOT_KINDS, *pipeline_kinds))}")
    if kind in pipeline_kinds:
        _save_figure(pipeline_kinds[kind](result), out)
        click.echo(f"wrote {out}")
        return
    if kind == "flow" and result.method != "flowmc":
        _fail(f"{result_file}: --kind flow needs a flowmc result, this one is from method '{result.method}'")
    shown, _ = _scalar_variables(result.idata, var_names, max_size=1)
    if not shown and kind != "flow":
        _fail(f"{result_file}: no scalar posterior variables to plot; choose some with --var NAME")
    _save_plot(result, kind, shown, out)
    click.echo(f"wrote {out}")


def _save_plot(result, kind: str, var_names: list[str], out: str) -> None:
    import warnings

    import arviz as az
    import numpy as np

    _quiet_arviz_logging()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "flow":
            from astroinfer.plots import flow_training_figure

            axes = flow_training_figure(result).axes
        elif kind == "corner":
            if len(var_names) == 1:
                axes = az.plot_posterior(result.idata, var_names=var_names)
            else:
                size = min(2.0 * len(var_names), 16.0)
                axes = az.plot_pair(result.idata, var_names=var_names, kind="scatter", marginals=True,
                                    figsize=(size, size), textsize=9,
                                    scatter_kwargs={"alpha": 0.4, "s": 3, "rasterized": True})
        else:
            axes = az.plot_trace(result.idata, var_names=var_names, compact=True)
    _save_figure(np.ravel(axes)[0].figure, out)


def _save_figure(figure, out: str) -> None:
    import matplotlib.pyplot as plt

    target = Path(out)
    try:
        atomic_write(target, lambda tmp: figure.savefig(tmp, dpi=100, bbox_inches="tight",
                                                         format=(target.suffix[1:] or "png")))
    finally:
        plt.close(figure)


@cli.command("simulate", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("pipeline")
@click.option("-o", "--out", "out", required=True, metavar="FILE", help="Input file to write (its format from the extension).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@click.pass_context
def simulate_command(ctx, pipeline, out, seed) -> None:
    """Write a synthetic input for PIPELINE with its truth recorded.

    The pipeline's simulation options (`astroinfer pipelines PIPELINE` lists them) follow.
    """
    import json

    from astroinfer.pipeline import get_pipeline, parse_option_args

    pipe = get_pipeline(pipeline)
    settings = parse_option_args(pipeline, pipe.simulate_options, ctx.args)
    truth = pipe.simulate(Path(out), seed, **settings)
    click.echo(f"wrote {out}")
    click.echo(json.dumps(truth.get("truth", truth), indent=2, sort_keys=True, default=str))


# -- entry point -----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and, as a script, exits with) the exit status."""
    configure_jax_devices()
    configure_compilation_cache()
    code = _main(argv)
    sys.stdout.flush()
    return code


def _main(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name=PROG, standalone_mode=False)
        return 0
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.format_message())
        return 0
    except click.exceptions.Exit as err:  # pragma: no cover - returned, not raised, by click
        return int(err.exit_code)
    except click.UsageError as err:
        command = err.ctx.command_path if err.ctx is not None else PROG
        _echo_err(f"error: {_one_line(err.format_message())} (see '{command} --help')")
        return 2
    except CLIError as err:
        _echo_err(f"error: {_one_line(err.format_message())}")
        return 2
    except click.ClickException as err:
        _echo_err(f"error: {_one_line(err.format_message())}")
        return 2 if err.exit_code == 2 else 1
    except (click.Abort, KeyboardInterrupt):
        _echo_err("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:
        try:
            user_errors = _user_errors()
        except Exception:  # the engine itself does not import: an internal error
            user_errors = ()
        if isinstance(err, user_errors):
            _echo_err(f"error: {_one_line(err)}")
            return 2
        import traceback

        traceback.print_exc()
        _echo_err(f"internal error: {type(err).__name__}: {_one_line(err)} (please report this with the traceback above)")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
