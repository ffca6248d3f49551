"""gaia-cluster: a star cluster's distance and size, and every star's distance and membership,
from Gaia parallaxes.

Model (per star ``i`` with parallax ``w_i`` and error ``s_i`` in mas, true distance ``r_i``
in pc, true parallax ``1000 / r_i`` mas)::

    w_i | r_i        ~ Normal(1000 / r_i + parallax_offset, s_i)
    r_i              ~ member_fraction  * cluster profile(cluster_distance, cluster_size)
                       + (1 - member_fraction) * field
    field            = sum_k field_weights[g_i, k] p(r; L_k)    (field "mixture", the default)
                    or p(r; field_scale)                         (field "edsd")
    p(r; L)          = r^2 exp(-r / L) / (2 L^3)      exponentially decreasing space density
    cluster profiles:  lognormal  log r ~ Normal(log D, size / D)     (the reference profile)
                       gaussian   r ~ Normal(D, size)
                       student    r ~ Student-t(3, D, size) as a Gaussian scale mixture:
                                  Normal(D, size / sqrt(lambda_k)), k = 1..8, equal weights,
                                  lambda_k the mid-quantiles of Gamma(3/2, rate 3/2)

This is the hierarchical mixture of the NumPyro introduction for astronomers, in which
NUTS samples every star's distance. Here each star's distance is integrated out of the
likelihood numerically instead: in ``u = log(parallax / mas)`` the integrand of each
component is close to a Gaussian, so an adaptive Gauss-Hermite rule centred at its mode
(a few Gauss-Newton steps from a prior/likelihood guess) with the Laplace width is accurate
with 4 nodes for the cluster term and 16 for the field term (checked against a dense
brute-force integral in ``tests/test_gaia_cluster.py``). On CPU the field term, which
depends on the globals only through ``field_scale`` and ``parallax_offset``, is tabulated
once per catalog as Chebyshev series made from that quadrature (:func:`with_field_table`).
NUTS (dense mass matrix) then samples only the globals ``cluster_distance`` (pc), ``cluster_size`` (pc),
``member_fraction``, ``field_weights`` (or ``field_scale``, pc) and ``parallax_offset`` (mas, when fitted).
The mixture field's component terms do not depend on the globals (unless ``offset="fit"``),
so they are computed once per catalog (:func:`with_field_components`). Every run stores a
posterior predictive check of the parallax histogram (``predictive_chi2``, ``predictive_p``;
a warning when p < 0.001).

With proper motions in the catalog (``pmra, pmdec, pmra_error, pmdec_error``, optionally
``pmra_pmdec_corr``; option ``proper_motion``), each component's likelihood also has a
proper-motion factor (:mod:`.proper_motion`): the cluster a mean motion with an internal
velocity dispersion (km/s) seen at its distance, the field a two-component scale mixture.
NUTS then samples the :data:`PM_GLOBALS` too, every chain started at the prior means.

Per-star results are drawn afterwards from their exact conditionals given each global draw
(:func:`star_conditionals`): membership probability ``P_i = q C_i / (q C_i + (1-q) F_i)``
and distance moments by the same quadrature (Rao-Blackwellised means and sds), distance
draws by inverse-CDF sampling on a fine grid. They are stored in the result's ``stars``
group on a ``star`` dimension with a ``source_id`` coordinate (``distance``, ``membership``,
...), joinable on ``source_id``; per-star draws in ``star_draws`` on request.

The parallax zero point of Lindegren et al. (2021) is applied when the catalog has the
columns it needs (``gaiadr3-zeropoint`` package), and a global parallax offset with prior
sd 0.012 mas (the spatially correlated part of Gaia's systematics over a field under a
degree; Lindegren et al. 2021, Vasiliev & Baumgardt 2021) shifts the members' parallaxes
by default (``offset="systematic"``): the field cannot pull it off its prior, and the
reported distance error includes the systematics. ``offset="fit"`` shifts every star's.
``systematics="gp"`` makes the members' offset a Gaussian-process field over the sky with
the angular covariance of Maiz Apellaniz et al. (2021) (:mod:`.systematics`).

:func:`reference_model` is the full-latent model (one latent distance per star, the
lognormal profile) used to prove that the marginalised model gives the same posterior.

The package's modules:

- :mod:`.options`: the name, the model's constants and the run and simulate options;
- :mod:`.data`: :func:`load` (read, check and cut a Gaia table), the Lindegren et al.
  (2021) zero point and the prior settings;
- :mod:`.marginal`: the quadrature marginal (:func:`log_component_marginals`) and the
  Chebyshev field table (:func:`with_field_table`) (JAX);
- :mod:`.field_mixture`: the default field, a mixture of fixed-scale densities with weights
  per group of stars of similar parallax error, its per-star component terms computed once (JAX);
- :mod:`.systematics`: the offset field's kernel (tinygp) and its projected-process basis;
- :mod:`.proper_motion`: the proper-motion terms and their globals' sample sites (JAX, NumPyro);
- :mod:`.numpyro_model`: :func:`model` and :func:`reference_model` (NumPyro);
- :mod:`.stars`: the per-star conditionals drawn after the globals (JAX);
- :mod:`.inference`: the ``sample`` hook (the run, then the result's star tables);
- :mod:`.simulation`: :func:`simulate` (its truth file at :func:`truth_path`, from :mod:`astroinfer.tables`);
- :mod:`.report`: ``show``, ``summarise``, the parallax and the proper-motion figures.

The model's, the simulator's and the hook's modules are not called ``model``, ``simulate``
and ``sample``: importing a submodule sets it as the package's attribute of that name,
which would replace the function the package exports.

Importing the package imports numpy only, because the CLI imports it to list the
pipelines: the modules that need JAX or NumPyro are imported when first used (:mod:`astroinfer.lazy`).
"""

from __future__ import annotations

from astroinfer.lazy import OnFirstUse, lazy_names
from astroinfer.pipeline import Pipeline
from astroinfer.tables import truth_path

# Names tests, benchmarks and notebooks use (numpy-only modules, imported now).
from .data import GaiaData, _distance_peak, field_groups, lindegren_zero_point, load, prior_settings, zero_point_in_range
from .options import (
    CLUSTER_NODES, FIELD_MODELS, FIELD_NODES, FIELD_SCALES_PC, FIELD_WEIGHTS, GLOBALS, HALO_COMPONENTS, LIKELY_MEMBER, MIN_STARS, NAME, NUTS_SETTINGS,
    OFFSET_MODES, OFFSET_PRIOR_SD, OPTIONS, PROFILES, PM_GLOBALS, PM_COLUMNS, FIELD_PM_MIN_SD, KM_S_PER_MAS_YR_KPC, REQUIRED, SIMULATE_OPTIONS, STUDENT_DOF, ZERO_POINT_COLUMNS,
    _halo_scales,
)
from .report import parallax_figure, proper_motion_figure, show, summarise
from .simulation import gaia_parallax_error, simulate, simulate_catalog, simulate_proper_motions

__all__ = [
    "PIPELINE", "load", "model", "reference_model", "simulate", "summarise", "show", "truth_path",
    "lindegren_zero_point", "zero_point_in_range", "log_component_marginals", "star_conditionals", "GLOBALS", "PROFILES",
    "GaiaData", "parallax_figure", "prior_settings", "field_table", "pilot_field_scale", "with_field_table",
    "log_pm_marginals", "PM_GLOBALS", "proper_motion_figure", "simulate_proper_motions",
    "FIELD_MODELS", "FIELD_SCALES_PC", "field_groups", "field_component_terms", "with_field_components",
]


model = OnFirstUse(__name__, "numpyro_model", "model")
sample = OnFirstUse(__name__, "inference", "sample")

# Other names of the JAX modules (tests, benchmarks and notebooks use them), by module.
_ON_FIRST_USE = {
    "marginal": ("log_component_marginals", "field_table", "pilot_field_scale", "with_field_table",
                 "FIELD_TABLE_HALF_WIDTH", "FIELD_TABLE_DEGREE", "OFFSET_TABLE_DEGREE", "OFFSET_TABLE_HALF_WIDTH",
                 "_field_from_table", "_inside_field_table", "_field_quadrature", "_Terms"),
    "field_mixture": ("field_component_terms", "with_field_components", "log_field_mixture"),
    "numpyro_model": ("reference_model",),
    "proper_motion": ("log_pm_marginals", "pm_globals"),
    "stars": ("star_conditionals", "_star_moments", "_star_draw"),
}
__getattr__, __dir__ = lazy_names(__name__, _ON_FIRST_USE, globals())


PIPELINE = Pipeline(
    name=NAME,
    description="Cluster distance, size and membership from Gaia parallaxes (star distances integrated out); "
                "input a Gaia table with source_id, ra, dec, parallax, parallax_error",
    load=load,
    model=model,
    simulate=simulate,
    summarise=summarise,
    demo_file="gaia_cluster_demo.ecsv",
    demo_seed=67,
    module_file=__file__,
    options=OPTIONS,
    simulate_options=SIMULATE_OPTIONS,
    sample=sample,
    show=show,
    plots={"parallax": parallax_figure, "proper-motion": proper_motion_figure},
    # NUTS (the default) and nested sampling (evidence to compare profiles) are tested here.
)
