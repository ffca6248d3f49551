"""spectral-lines: K emission or absorption lines on a polynomial or GP continuum.

K is given or chosen by nested-sampling evidence (``--lines auto``); the lines have ordered
centres, Gaussian, Lorentzian or pseudo-Voigt profiles and physical per-line quantities in the
input's units. The package's modules:

- :mod:`.options`: name, choices, prior bounds, option parsers and tables;
- :mod:`.data`: reading a spectrum (FITS image or table) and :func:`load`;
- :mod:`.numpyro_model`: the NumPyro :func:`model` (its docstring states the model), the
  profiles, the GP continuum and the likelihoods;
- :mod:`.derived`: the physical per-line quantities and the model curves from the draws;
- :mod:`.residuals`: the check for structure left in a fit's residuals;
- :mod:`.starts` and :mod:`.gp_start`: NUTS's start point (least squares; the GP
  continuum's start search);
- :mod:`.evidence`: ``--lines auto``'s nested-sampling fits and choice of K;
- :mod:`.inference`: the ``sample`` hook, the fixed-K fit and the result's finishing;
- :mod:`.report` and :mod:`.plots`: the line table, ``show``, ``summarise`` and the fit figure;
- :mod:`.simulation`: :func:`simulate` and the tutorial spectrum.

The model's module is not called ``model`` (nor the simulator's ``simulate``): importing a
submodule sets it as the package's attribute of that name, which would replace the
:func:`model` (:func:`simulate`) this package exports.

Importing the package imports numpy only, because the CLI imports it to list the pipelines:
the modules that need JAX are imported when first used (:mod:`astroinfer.lazy`).
"""

from __future__ import annotations

from astroinfer.lazy import OnFirstUse, lazy_names
from astroinfer.pipeline import Pipeline
from astroinfer.tables import truth_path

from .data import _messages, load
from .options import (
    COEF_SD, CONTINUA, GAUSS_FWHM, GP_HYPERPARAMETER_MODES, GP_SCALE_MAX_U, GP_SCALE_MIN_U, GP_WIDTH_MAX_U, KERNELS,
    LINE_VARIABLES, LOG_BAYES_FACTOR_FOR_A_LINE, LOG_GP_AMP_BOUNDS, LOG_NOISE_BOUNDS, NAME, OPTIONS, PROFILES,
    SIGNS, SIMULATE_OPTIONS, SPEED_OF_LIGHT_KMS, WIDTH_MAX_U, count_parameters,
)
from .report import line_table, show, summarise
from .simulation import simulate, tutorial_spectrum

__all__ = ["PIPELINE", "load", "model", "simulate", "summarise", "show", "fit_figure", "truth_path",
           "line_table", "count_parameters", "tutorial_spectrum"]


model = OnFirstUse(__name__, "numpyro_model", "model")
fit_figure = OnFirstUse(__name__, "plots", "fit_figure")

# Other names of the JAX modules (tests, benchmarks and notebooks use them), by module.
_ON_FIRST_USE = {
    "numpyro_model": ("STRUCTURE_KEYS", "GPResidualLikelihood", "PixelLikelihood", "add_line_centres",
                      "amplitude_bounds", "fixed_gp_log_likelihood", "fixed_gp_sites", "line_centres_np",
                      "ordered_positions", "ordered_positions_inverse", "split_data", "white_noise_variance",
                      "_gaussian_process", "_gp_kernel", "_profile", "_profiles"),
    "derived": ("derived_quantities", "_flat_params", "_fwhm_u", "_gp_continuum_at", "_profile_integral"),
    "starts": ("initial_values", "least_squares_start"),
    "gp_start": ("binned_spectrum", "gp_continuum_start", "map_estimate", "searched_lines", "_log_mass"),
    "evidence": ("AUTO_LIVE_POINTS", "AUTO_LIVE_POINTS_GP", "choose_by_evidence", "choose_num_lines",
                 "nested_fit"),
    "inference": ("finalise",),
    "residuals": ("residual_structure", "residual_check", "STRUCTURE_P_VALUE"),
}
__getattr__, __dir__ = lazy_names(__name__, _ON_FIRST_USE, globals())


PIPELINE = Pipeline(
    name=NAME,
    description="Emission/absorption lines (ordered centres, K by evidence) on a polynomial or O(N) GP "
                "continuum; 1-D FITS or table spectra",
    load=load,
    model=model,
    simulate=simulate,
    summarise=summarise,
    demo_file="spectral_lines_demo.ecsv",
    demo_seed=6563,
    module_file=__file__,
    options=OPTIONS,
    simulate_options=SIMULATE_OPTIONS,
    sample=OnFirstUse(__name__, "inference", "sample"),
    show=show,
    plots={"fit": fit_figure},
)
