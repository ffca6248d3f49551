"""spectral-lines: physical per-line quantities from the standardised draws.

``line_center``, ``line_fwhm``, ``line_amplitude``, ``line_flux`` (integral of the profile),
``line_eqw`` (``line_flux`` over the continuum at the centre; on a GP continuum the GP's
conditional mean there) and, with ``rest`` given, ``line_velocity`` (km/s), each with its unit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from .legendre import legendre_design
from .numpyro_model import _gaussian_process, _lines_flux, _poly, _profiles, fixed_gp_sites, white_noise_variance
from .options import GAUSS_FWHM, SPEED_OF_LIGHT_KMS

if TYPE_CHECKING:
    from astroinfer.result import Result


def _draws(posterior, name: str) -> np.ndarray | None:
    return np.asarray(posterior[name], dtype=np.float64) if name in posterior else None


def _profile_integral(width: np.ndarray, eta: np.ndarray | None, profile: str) -> np.ndarray:
    """Integral of the peak-normalised profile, in standardised x units."""
    if profile == "gaussian":
        return width * math.sqrt(2.0 * math.pi)
    if profile == "lorentzian":
        return math.pi * width
    gauss = width / GAUSS_FWHM * math.sqrt(2.0 * math.pi)
    lorentz = math.pi * width / 2.0
    return eta * lorentz + (1.0 - eta) * gauss


def _fwhm_u(width: np.ndarray, profile: str) -> np.ndarray:
    return {"gaussian": GAUSS_FWHM * width, "lorentzian": 2.0 * width, "voigt": width}[profile]


def _gp_continuum_at(settings: dict, x_u: np.ndarray, y_u: np.ndarray, s_u: np.ndarray | None,
                     params: dict[str, np.ndarray], at: np.ndarray, chunk: int = 64) -> np.ndarray:
    """GP continuum (polynomial mean + GP conditional mean given the line-subtracted data) at ``at``.

    ``params`` hold one row per draw; ``at`` has shape (draws, M). Returns (draws, M).
    """
    profile, kernel = settings["profile"], settings["kernel"]
    x = jnp.asarray(x_u, dtype=jnp.float32)
    y = jnp.asarray(y_u, dtype=jnp.float32)
    sigma = None if s_u is None else jnp.asarray(s_u, dtype=jnp.float32)

    def one(p, points):
        lines = jnp.zeros_like(x)
        if "center_u" in p:
            lines = _lines_flux(x, p["center_u"], jnp.exp(p["log_width_u"]), p.get("voigt_eta"), p["amplitude_u"],
                                profile)
        mean = _poly(x, p["continuum_coef"])
        var = white_noise_variance(jnp, sigma, p.get("log_noise_u"), p.get("log_jitter_u"))
        gp = _gaussian_process(kernel, p["log_gp_amp"], p["log_gp_scale"], x, var)
        order = jnp.argsort(points)
        sorted_points = points[order]
        cond = gp.condition(y - mean - lines, X_test=sorted_points).gp.loc
        values = jnp.zeros_like(points).at[order].set(cond)
        return values + _poly(points, p["continuum_coef"])

    batched = jax.jit(jax.vmap(one))
    num = at.shape[0]
    out = np.empty(at.shape, dtype=np.float64)
    for start in range(0, num, chunk):
        stop = min(num, start + chunk)
        sub = {k: jnp.asarray(v[start:stop], dtype=jnp.float32) for k, v in params.items()}
        pts = jnp.asarray(at[start:stop], dtype=jnp.float32)
        if stop - start < chunk:  # pad so one compiled shape serves every chunk
            pad = chunk - (stop - start)
            sub = {k: jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)]) for k, v in sub.items()}
            pts = jnp.concatenate([pts, jnp.repeat(pts[-1:], pad, axis=0)])
        out[start:stop] = np.asarray(batched(sub, pts))[: stop - start]
    return out


_PARAM_SITES = ("center_u", "log_width_u", "amplitude_u", "voigt_eta", "continuum_coef", "log_noise_u",
                "log_jitter_u", "log_gp_amp", "log_gp_scale")


def _flat_params(posterior, fixed: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """One row per draw of each parameter; ``fixed`` values (held-fixed GP hyperparameters)
    are repeated for every draw."""
    out = {}
    for name in _PARAM_SITES:
        if name in posterior:
            values = np.asarray(posterior[name], dtype=np.float64)
            out[name] = values.reshape((-1,) + values.shape[2:])
    total = next(iter(out.values())).shape[0] if out else 0
    for name, value in (fixed or {}).items():
        out[name] = np.full(total, float(value))
    return out


def _fixed_values(settings: dict) -> dict[str, float]:
    """The held-fixed GP hyperparameters by site name (empty when they were sampled)."""
    if settings.get("gp_fixed") is None:
        return {}
    return {name: float(v) for name, v in zip(fixed_gp_sites(settings), np.asarray(settings["gp_fixed"]))}


def derived_quantities(posterior, settings: dict, meta: dict, arrays: dict) -> dict[str, np.ndarray]:
    """Physical per-line quantities, each (chain, draw, K), from standardised draws."""
    num_lines = settings["num_lines"]
    if num_lines == 0:
        return {}
    std = meta["standardisation"]
    x_mid, x_half, f0, fs = std["x_mid"], std["x_half"], std["flux_zero"], std["flux_scale"]
    center_u = _draws(posterior, "center_u")
    width_u = np.exp(_draws(posterior, "log_width_u"))
    amp_u = _draws(posterior, "amplitude_u")
    eta = _draws(posterior, "voigt_eta")
    profile = settings["profile"]
    out = {
        "line_center": x_mid + x_half * center_u,
        "line_fwhm": x_half * _fwhm_u(width_u, profile),
        "line_amplitude": fs * amp_u,
    }
    out["line_flux"] = out["line_amplitude"] * x_half * _profile_integral(width_u, eta, profile)
    continuum = settings["continuum"]
    if continuum == "poly":
        coef = _draws(posterior, "continuum_coef")
        level_u = np.einsum("...kj,...j->...k", legendre_design(center_u, coef.shape[-1] - 1), coef)
        out["line_eqw"] = out["line_flux"] / (f0 + fs * level_u)
    elif continuum == "gp":
        x_u = (arrays["x_values"] - x_mid) / x_half
        y_u = (arrays["flux_values"] - f0) / fs
        s_u = None if arrays["error_values"] is None else arrays["error_values"] / fs
        flat = _flat_params(posterior, _fixed_values(settings))
        lead = center_u.shape[:2]
        level_u = _gp_continuum_at(settings, x_u, y_u, s_u, flat, center_u.reshape((-1, num_lines)))
        out["line_eqw"] = out["line_flux"] / (f0 + fs * level_u.reshape(lead + (num_lines,)))
    rest = meta.get("rest")
    if rest is not None and meta.get("axis") in ("wavelength", "frequency"):
        if meta["axis"] == "wavelength":  # optical convention
            out["line_velocity"] = SPEED_OF_LIGHT_KMS * (out["line_center"] - rest) / rest
        else:  # radio convention
            out["line_velocity"] = SPEED_OF_LIGHT_KMS * (rest - out["line_center"]) / rest
    return out


def _units(meta: dict) -> dict[str, str]:
    x_unit = meta.get("x_unit") or "axis units"
    flux_unit = meta.get("flux_unit") or "flux units"
    if meta.get("x_unit") and meta.get("flux_unit"):
        flux_integral = f"({flux_unit}) {x_unit}"
    else:
        flux_integral = f"{flux_unit} x {x_unit}"
    return {"line_center": x_unit, "line_fwhm": x_unit, "line_amplitude": flux_unit,
            "line_flux": flux_integral, "line_eqw": x_unit, "line_velocity": "km / s"}


def model_curves(result: "Result", num_draws: int = 40, seed: int = 0):
    """(x, flux, error, lines (draws, K, N), continuum (draws, N)) in physical units, for
    ``num_draws`` posterior draws of a finished result (its constant_data group)."""
    const = result.idata.constant_data
    attrs = const.attrs
    settings = {k: attrs[k] for k in ("num_lines", "profile", "continuum", "degree", "kernel")}
    settings["num_lines"] = int(settings["num_lines"])
    x = np.asarray(const["x"]); flux = np.asarray(const["flux"])
    error = np.asarray(const["error"]) if "error" in const else None
    x_mid, x_half, f0, fs = (float(attrs[k]) for k in ("x_mid", "x_half", "flux_zero", "flux_scale"))
    x_u, y_u = (x - x_mid) / x_half, (flux - f0) / fs
    fixed = {k[len("fixed_"):]: float(v) for k, v in attrs.items() if k.startswith("fixed_")}
    flat = _flat_params(result.idata.posterior, fixed)
    total = next(iter(flat.values())).shape[0] if flat else 0
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(num_draws, total), replace=False)) if total else np.array([], int)
    params = {k: v[pick] for k, v in flat.items()}
    per_line = np.zeros((pick.size, settings["num_lines"], x.size))
    if settings["num_lines"]:
        for i in range(pick.size):
            eta = params["voigt_eta"][i] if "voigt_eta" in params else None
            shapes = np.asarray(_profiles(jnp.asarray(x_u), jnp.asarray(params["center_u"][i]),
                                          jnp.exp(jnp.asarray(params["log_width_u"][i])),
                                          None if eta is None else jnp.asarray(eta), settings["profile"]))
            per_line[i] = (shapes * params["amplitude_u"][i][None, :]).T * fs
    if settings["continuum"] == "gp":
        s_u = None if error is None else error / fs
        cont_u = _gp_continuum_at(settings, x_u, y_u, s_u, params, np.repeat(x_u[None, :], pick.size, axis=0),
                                  chunk=8)
    elif settings["continuum"] == "poly":
        coef = params["continuum_coef"]
        cont_u = coef @ legendre_design(x_u, coef.shape[-1] - 1).T if pick.size else np.zeros((0, x.size))
    else:
        cont_u = np.zeros((pick.size, x.size))
    continuum = f0 + fs * cont_u
    return x, flux, error, per_line, continuum
