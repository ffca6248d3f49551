"""line-fit: a straight line through points with outliers.

The mixture model of Hogg, Bovy & Lang (2010, arXiv:1008.4686, section 3). Each point
``(x_i, y_i, sigma_i)`` is either *good*, drawn from the line::

    y_i ~ Normal(m x_i + b, sigma_i)

or, with probability ``Q``, *bad*, drawn from a broad background::

    y_i ~ Normal(Y_b, sqrt(sigma_i^2 + V_b))

The good/bad indicator of each point is summed out in the likelihood (a two-component
mixture, ``logaddexp`` of the two terms), so every parameter is continuous and all three
methods can sample it. The posterior probability that a point is an outlier is computed
afterwards by :func:`summarise`.

Priors are proper (nested sampling needs that) and scaled from the data, with
``s_x = std(x)`` and ``s_y = max(std(y), median(sigma_y))``::

    m          ~ Normal(0, 5 s_y / s_x)
    b_centered ~ Normal(mean(y), 5 s_y)      the line at x = mean(x); b = b_centered - m mean(x)
    Q          ~ Uniform(0, 1)
    Y_b        ~ Normal(mean(y), 5 s_y)
    ln_V_b     ~ Normal(2 ln s_y, 3)         V_b = exp(ln_V_b)

Sampling the line's value at the data's mean ``x`` instead of the intercept removes the
strong slope-intercept correlation; ``b`` and ``V_b`` are recorded as deterministic sites.

Input: a table (CSV, ECSV, FITS or VOTable, read by ``astropy.table``) with columns ``x``,
``y`` and ``sigma_y`` (other names through the load options ``x=``, ``y=``, ``sigma_y=``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astroinfer.pipeline import InputError, OutputError, Pipeline, PipelineData
from astroinfer.tables import (
    READ_FORMATS, check_simulate_target, extension, find_column, float_column, read_table, shown_columns, truth_path,
    write_simulated,
)

if TYPE_CHECKING:
    from astroinfer.result import Result

__all__ = ["PIPELINE", "load", "model", "simulate", "summarise", "truth_path", "MIN_ROWS"]

NAME = "line-fit"
COLUMNS = ("x", "y", "sigma_y")
MIN_ROWS = 5
PARAMETERS = ("m", "b", "Q", "Y_b", "V_b")

_WRITE_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits"}
_EXPECTED = "a table with columns x, y, sigma_y (CSV, ECSV, FITS or VOTable)"


# -- load and validate ---------------------------------------------------------------
def _find_column(table, path: Path, wanted: str, option: str) -> str:
    name = find_column(table.colnames, wanted)
    if name is None:
        hint = "" if wanted == option else f" (named by the load option {option}=)"
        raise InputError(
            f"{path}: column '{wanted}' is missing{hint}; expected columns x, y, sigma_y; "
            f"found {shown_columns(table.colnames)}"
        )
    return name


def _column(table, path: Path, name: str) -> np.ndarray:
    values = float_column(table, path, name)
    mask = np.ma.getmaskarray(table[name])
    if mask.any():
        rows = np.flatnonzero(mask)
        raise InputError(f"{path}: column '{name}' has {rows.size} empty value(s) (first at data row "
                         f"{rows[0] + 1}); expected a number in every row")
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InputError(f"{path}: column '{name}' has {rows.size} non-finite value(s) (first at data row "
                         f"{rows[0] + 1}: {values[rows[0]]}); expected finite numbers")
    return values


def load(path: str | os.PathLike, *, x: str = "x", y: str = "y", sigma_y: str = "sigma_y") -> PipelineData:
    """Read and validate a line-fit table; :class:`~astroinfer.pipeline.InputError` on any problem.

    ``x``, ``y``, ``sigma_y`` name the columns (matched exactly, then ignoring case). If
    ``y`` and ``sigma_y`` carry units, ``sigma_y`` is converted to ``y``'s unit.
    """
    path = Path(path)
    for option, value in (("x", x), ("y", y), ("sigma_y", sigma_y)):
        if not isinstance(value, str) or not value:
            raise InputError(f"{path}: load option {option} must be a column name, got {value!r}")
    table = read_table(path, _EXPECTED)
    if len(table.colnames) == 0:
        raise InputError(f"{path}: not a table with columns x, y, sigma_y (no columns found)")
    names = {role: _find_column(table, path, wanted, role)
             for role, wanted in (("x", x), ("y", y), ("sigma_y", sigma_y))}
    if len(table) < MIN_ROWS:
        raise InputError(f"{path}: {len(table)} data row(s); line-fit needs at least {MIN_ROWS}")
    xs, ys, sig = (_column(table, path, names[role]) for role in COLUMNS)
    units = {role: (str(table[name].unit) if getattr(table[name], "unit", None) is not None else None)
             for role, name in names.items()}
    if units["y"] is not None and units["sigma_y"] is not None and units["y"] != units["sigma_y"]:
        y_unit, s_unit = table[names["y"]].unit, table[names["sigma_y"]].unit
        try:
            sig = sig * s_unit.to(y_unit)
        except Exception as err:
            raise InputError(f"{path}: column '{names['sigma_y']}' has unit {s_unit}, which does not convert "
                             f"to the unit of '{names['y']}' ({y_unit})") from err
        units["sigma_y"] = units["y"]
    nonpositive = np.flatnonzero(sig <= 0)
    if nonpositive.size:
        row = nonpositive[0]
        raise InputError(f"{path}: column '{names['sigma_y']}' must be > 0 in every row; {nonpositive.size} row(s) are "
                         f"not (first at data row {row + 1}: {sig[row]})")
    if np.unique(xs).size < 2:
        raise InputError(f"{path}: column '{names['x']}' has a single distinct value; a line's slope needs at least two")
    metadata = {
        "path": str(path),
        "format": READ_FORMATS.get(extension(path), "guessed"),
        "num_rows": int(len(xs)),
        "columns": names,
        "units": units,
    }
    return PipelineData(data={"x": xs, "y": ys, "sigma_y": sig}, metadata=metadata)


# -- model ---------------------------------------------------------------------------
def model(x, y, sigma_y):
    """Line plus outlier background, indicators marginalised; priors scaled from the data."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    x = jnp.asarray(x)
    y = jnp.asarray(y)
    sigma_y = jnp.asarray(sigma_y)
    x_mean = jnp.mean(x)
    x_sd = jnp.std(x)
    y_mean = jnp.mean(y)
    y_sd = jnp.maximum(jnp.std(y), jnp.median(sigma_y))

    m = numpyro.sample("m", dist.Normal(0.0, 5.0 * y_sd / x_sd))
    b_centered = numpyro.sample("b_centered", dist.Normal(y_mean, 5.0 * y_sd))
    q = numpyro.sample("Q", dist.Uniform(0.0, 1.0))
    y_b = numpyro.sample("Y_b", dist.Normal(y_mean, 5.0 * y_sd))
    ln_v_b = numpyro.sample("ln_V_b", dist.Normal(2.0 * jnp.log(y_sd), 3.0))
    numpyro.deterministic("b", b_centered - m * x_mean)
    v_b = numpyro.deterministic("V_b", jnp.exp(ln_v_b))

    line = b_centered + m * (x - x_mean)
    # Good/bad indicator summed out: per point, logaddexp of (1-Q) N(y | line, sigma_y) and
    # Q N(y | Y_b, sqrt(sigma_y^2 + V_b)). MixtureGeneral computes exactly that and keeps y
    # as an observed site (so it lands in the result's observed_data).
    mixing = dist.Categorical(probs=jnp.stack([1.0 - q, q]))
    components = [dist.Normal(line, sigma_y), dist.Normal(y_b, jnp.sqrt(sigma_y**2 + v_b))]
    numpyro.sample("y", dist.MixtureGeneral(mixing, components), obs=y)


# -- simulate ------------------------------------------------------------------------
def simulate(path: str | os.PathLike, seed: int = 0, *, num_points: int = 50,
             truth: dict[str, float] | None = None) -> dict[str, Any]:
    """Write a synthetic line-fit table to ``path`` (.csv, .ecsv or .fits); return the truth.

    Truth values not given in ``truth`` are drawn from ``seed``: slope in [-3, 3],
    intercept in [-20, 20], outlier fraction in [0.1, 0.3], background centred near the
    line's middle with spread 8-20. ``x`` is uniform on [0, 10], ``sigma_y`` on [0.5, 2].
    The truth (with the outliers' 0-based row numbers) is written beside the table as
    ``<name>.truth.json`` and, for ECSV and FITS, into the table's metadata.
    """
    from astropy.table import Table

    path = Path(path)
    ext = check_simulate_target(path, seed, _WRITE_FORMATS)
    if num_points < MIN_ROWS:
        raise OutputError(f"num_points must be at least {MIN_ROWS}, got {num_points}")

    rng = np.random.default_rng(seed)
    drawn = {
        "m": float(rng.uniform(-3.0, 3.0)),
        "b": float(rng.uniform(-20.0, 20.0)),
        "Q": float(rng.uniform(0.1, 0.3)),
    }
    drawn["Y_b"] = float(drawn["b"] + 5.0 * drawn["m"] + rng.normal(0.0, 5.0))
    drawn["V_b"] = float(rng.uniform(8.0, 20.0) ** 2)
    params = {**drawn, **(truth or {})}
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise OutputError(f"unknown truth parameter(s) {', '.join(sorted(unknown))}; expected {', '.join(PARAMETERS)}")

    x = np.sort(rng.uniform(0.0, 10.0, num_points))
    sigma_y = rng.uniform(0.5, 2.0, num_points)
    bad = rng.uniform(size=num_points) < params["Q"]
    y_good = params["m"] * x + params["b"] + sigma_y * rng.normal(size=num_points)
    y_bad = params["Y_b"] + np.sqrt(sigma_y**2 + params["V_b"]) * rng.normal(size=num_points)
    y = np.where(bad, y_bad, y_good)

    record = {
        "pipeline": NAME,
        "seed": int(seed),
        "num_points": int(num_points),
        "truth": params,
        "outlier_rows": np.flatnonzero(bad).tolist(),
        "model": "Hogg, Bovy & Lang (2010) section 3: line y = m x + b with errors sigma_y; "
                 "outliers with probability Q from Normal(Y_b, sqrt(sigma_y^2 + V_b))",
    }
    table = Table({"x": x, "y": y, "sigma_y": sigma_y})
    for name in table.colnames:
        table[name].format = ".6g"
    write_simulated(path, table, _WRITE_FORMATS[ext], record, fits_header={
        "PIPELINE": NAME, "SEED": int(seed), "M_TRUE": params["m"], "B_TRUE": params["b"], "Q_TRUE": params["Q"],
        "YB_TRUE": params["Y_b"], "VB_TRUE": params["V_b"]})
    return record


# -- summarise -----------------------------------------------------------------------
def summarise(result: "Result", data: PipelineData) -> dict[str, Any]:
    """Parameter table, and each point's posterior probability of being an outlier.

    Returns ``parameters`` (an ``arviz.summary`` table of m, b, Q, Y_b, V_b),
    ``outlier_probability`` (one number per data row) and ``outliers`` (a line of text).
    """
    from scipy.stats import norm

    posterior = result.idata.posterior
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = result.summary(var_names=list(PARAMETERS))
    draws = {k: np.asarray(posterior[k]).reshape(-1) for k in ("m", "b", "Q", "Y_b", "V_b")}
    stride = max(1, draws["m"].size // 2000)
    d = {k: v[::stride][:, None] for k, v in draws.items()}
    x, y, s = (np.asarray(data.data[k])[None, :] for k in COLUMNS)
    log_good = np.log1p(-d["Q"]) + norm.logpdf(y, d["m"] * x + d["b"], s)
    log_bad = np.log(d["Q"]) + norm.logpdf(y, d["Y_b"], np.sqrt(s**2 + d["V_b"]))
    prob = np.mean(np.exp(log_bad - np.logaddexp(log_good, log_bad)), axis=0)
    likely = np.flatnonzero(prob > 0.5)
    shown = ", ".join(str(i + 1) for i in likely[:30]) + (", ..." if likely.size > 30 else "")
    text = (f"{likely.size} of {prob.size} points are likely outliers (P > 0.5)"
            + (f": data rows {shown}" if likely.size else ""))
    return {"parameters": table, "outlier_probability": prob, "outliers": text}


PIPELINE = Pipeline(
    name=NAME,
    description="Straight line with an outlier mixture (Hogg, Bovy & Lang 2010); input columns x, y, sigma_y",
    load=load,
    model=model,
    simulate=simulate,
    summarise=summarise,
    demo_file="line_fit_demo.csv",
    demo_seed=20100824,
    module_file=__file__,
)
