"""gaia-cluster's name, the model's constants (globals, cluster profiles, prior and quadrature
settings, the heavy-tailed profile's width factors) and the run and simulate options.

numpy only at import (SciPy where the width factors are computed): the package imports this
module when the CLI lists the pipelines.
"""

from __future__ import annotations

import math

import numpy as np

from astroinfer.pipeline import PipelineOption, parse_choice, parse_count, parse_positive

NAME = "gaia-cluster"
REQUIRED = ("source_id", "ra", "dec", "parallax", "parallax_error")
ZERO_POINT_COLUMNS = ("phot_g_mean_mag", "nu_eff_used_in_astrometry", "pseudocolour", "ecl_lat",
                      "astrometric_params_solved")
GLOBALS = ("cluster_distance", "cluster_size", "member_fraction", "field_scale", "parallax_offset")
#: The field's distance distribution (option ``field``): "mixture", a mixture of
#: r^2 exp(-r/L_k) densities with the fixed length scales FIELD_SCALES_PC and weights per
#: group of stars of similar parallax error (:mod:`.field_mixture`); "edsd", one such density
#: with a fitted L (``field_scale``). On the raw M67 cone "edsd" left a posterior predictive
#: chi^2 of 466 over 40 parallax bins (too few stars near and far); "mixture" 46 (p = 0.21).
FIELD_MODELS = ("mixture", "edsd")
#: The mixture's weights site: (groups, components), stored on ``field_group`` x ``field_component``.
FIELD_WEIGHTS = "field_weights"
#: The offset field's whitened coordinates (``systematics="gp"``, :mod:`.systematics`).
OFFSET_FIELD = "offset_field"
#: Length scales of the mixture's components (pc): 100 pc to 6.4 kpc in factors of 2, so the
#: densities' modes (2 L) run from 200 pc to 12.8 kpc, each component about a factor 2 wide
#: (an r^2 exp(-r/L) density has sd/mean 0.58). On raw M67 nine scales from 25 pc gave the
#: 25 and 50 pc components < 3% weight and the same distance (837.2 vs 837.0 pc) and fit
#: (chi^2 49 vs 46), in 1.4x the sampling time (90 vs 63 s): every weight the data do not
#: need is a loose direction that NUTS's early warmup pays for. Factors of 4 (five scales)
#: were faster again (38 s) but fitted worse (chi^2 66, p = 0.004).
FIELD_SCALES_PC = tuple(100.0 * 2.0**k for k in range(7))
#: Stars per field group, and the most groups: the stars are split at quantiles of their
#: parallax error (faint stars are far, so the field's distances depend on it), one set of
#: mixture weights per group; 500 stars or fewer share one set.
STARS_PER_FIELD_GROUP = 500
MAX_FIELD_GROUPS = 4
#: Proper-motion columns: the four a catalog needs for proper-motion membership, and the
#: optional correlation (taken as 0 when absent).
PM_COLUMNS = ("pmra", "pmdec", "pmra_error", "pmdec_error")
PM_CORRELATION_COLUMN = "pmra_pmdec_corr"
#: The globals proper motions add (mas/yr): the cluster's mean and internal dispersion, and
#: the field's two-component Gaussian scale mixture (one mean; component 2 the broader one,
#: by construction).
PM_GLOBALS = ("cluster_pmra", "cluster_pmdec", "cluster_velocity_dispersion", "field_pm_fraction",
              "field_pmra", "field_pmdec",
              "field_pm_excess_ra", "field_pm_excess_dec", "field_pm_broadening", "field_pm_corr_1", "field_pm_corr_2")
PM_MODES = ("auto", "on", "off")
#: The simulator's fields: the model's own family, or a Galactic disc through a magnitude limit.
SIMULATED_FIELDS = ("model", "disc")
KM_S_PER_MAS_YR_KPC = 4.740470  # 1 mas/yr at 1 kpc, in km/s
#: The narrowest the field's proper-motion components may be (mas/yr, intrinsic, per axis):
#: field stars move at 10-40 km/s, which is 0.2-0.8 mas/yr even at 10 kpc; a narrower
#: clump of co-moving stars is a cluster, and the field must not take its members.
FIELD_PM_MIN_SD = 0.5
PROFILES = ("lognormal", "gaussian", "student")
STUDENT_DOF = 3.0
HALO_COMPONENTS = 8
#: Prior sd of the global parallax offset (mas): the spatially correlated part of Gaia
#: (E)DR3's parallax systematics on scales under a degree (Lindegren et al. 2021, sect. 5.6;
#: Vasiliev & Baumgardt 2021: about 0.011 mas).
OFFSET_PRIOR_SD = 0.012
#: How the offset enters (option ``offset``): "systematic", the members' parallaxes only (the
#: field's density is too rough a model to measure the offset from: on the raw M67 cone, "fit"
#: let the field pull it to -0.12 mas, 10 prior sd, and the distance 10% short); "fit", every
#: star's; "off", none.
OFFSET_MODES = ("systematic", "fit", "off")
#: The offset's spatial model (option ``systematics``): "global", one offset for the whole
#: field; "gp", a Gaussian-process offset field over the sky (:mod:`.systematics`).
SYSTEMATICS_MODES = ("global", "gp")
CLUSTER_NODES = 4
FIELD_NODES = 16
#: Gauss-Hermite nodes of the mixture field's component terms. They are computed once per
#: catalog (unless offset=fit), so they can afford many: a star of parallax SNR ~4 under the
#: 6.4 kpc component has its mass split between the likelihood and a prior peaked 15 times
#: farther, and 16 nodes missed 0.18 nat of it (32: 0.025, 64: 0.002, 96: 1e-5; against
#: float64 sums, tests/test_gaia_field_mixture.py).
MIXTURE_FIELD_NODES = 96
MIN_STARS = 10
LIKELY_MEMBER = 0.5
# NUTS defaults for the globals (options the user sets win): a dense mass matrix, since the
# four globals are correlated, and a target acceptance of 0.65, the optimum for HMC
# (Beskos et al. 2013). On M67 it gave 1.4x the minimum ESS per second of 0.8 (5.9
# instead of 8.5 leapfrog steps per draw) with no divergences.
NUTS_SETTINGS = {"dense_mass": True, "target_accept_prob": 0.65}
#: With proper motions every chain starts at the prior means (the cluster's motion at the
#: catalog's proper-motion peak): with the default start (medians of 15 prior draws) a
#: chain's cluster motion started ~1.6 mas/yr off the members' (the prior is 5 mas/yr wide),
#: ten times their spread, and 3 of 6 runs on two simulated cones had a chain settle in a
#: mode 1500 nats down (the field holding the members); from the means, none of 6.
PM_NUTS_SETTINGS = {"init": "mean"}
#: flow-MC defaults (options the user sets win): HMC local moves. With MALA the local steps
#: adapted to ~0.003 (in units of the chains' spread) among the mixture's weights and the
#: flow learned from chains that had not moved: on the demo cone global acceptance 0.015,
#: R-hat 2.5. HMC (8 leapfrog steps): 0.44 and R-hat 1.11 in 46 s; NUTS: 0.60 but 415 s.
FLOWMC_SETTINGS = {"local_kernel": "hmc"}


def _halo_scales() -> np.ndarray:
    """Width factors of the heavy-tailed profile: a Student-t with 3 degrees of freedom is a
    Gaussian scale mixture over precision factors lambda ~ Gamma(3/2, rate 3/2); the profile
    takes the HALO_COMPONENTS mid-quantiles of that Gamma, equal weights, so its
    quadrature is that of the Gaussian profile, component by component."""
    # SciPy here, not at the top: the package imports this module at CLI start-up.
    from scipy.stats import gamma

    levels = (np.arange(HALO_COMPONENTS) + 0.5) / HALO_COMPONENTS
    lam = gamma.ppf(levels, STUDENT_DOF / 2, scale=2 / STUDENT_DOF)
    return 1.0 / np.sqrt(lam)


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


OPTIONS = (
    PipelineOption("parallax_min", "keep stars with parallax (after the zero point) above this, mas", None, _parse_float),
    PipelineOption("parallax_max", "keep stars with parallax (after the zero point) below this, mas", None, _parse_float),
    PipelineOption("g_max", "keep stars brighter than this G magnitude (needs phot_g_mean_mag)", None, _parse_float),
    PipelineOption("ruwe_max", "keep stars with RUWE below this when the catalog has a ruwe column", 1.4, parse_positive),
    PipelineOption("zero_point", "Lindegren et al. (2021) parallax zero point: auto (when its columns are "
                   "present), on, off", "auto", parse_choice("auto", "on", "off")),
    PipelineOption("offset", "global parallax offset, prior sd 0.012 mas: systematic (shifts the members' "
                   "parallaxes only, so the field cannot pull it off its prior and the distance error includes "
                   "it), fit (shifts every star's), off", "systematic", parse_choice(*OFFSET_MODES)),
    PipelineOption("systematics", "the offset over the sky: global (one offset) or gp (a Gaussian-process offset "
                   "field with the Maiz Apellaniz et al. 2021 angular covariance, V(0) = 0.0103^2 mas^2; needs "
                   "offset systematic)", "global", parse_choice(*SYSTEMATICS_MODES)),
    PipelineOption("profile", "cluster profile: lognormal, gaussian or student (heavy tails)", "lognormal", parse_choice(*PROFILES)),
    PipelineOption("proper_motion", "membership from proper motions too: auto (when the catalog has pmra, pmdec, "
                   "pmra_error, pmdec_error), on, off (parallaxes only)", "auto", parse_choice(*PM_MODES)),
    PipelineOption("field", "the field's distance distribution: mixture (r^2 exp(-r/L) components of fixed L = "
                   "100 pc .. 6.4 kpc, weights per group of similar parallax error) or edsd (one component, L fitted)",
                   "mixture", parse_choice(*FIELD_MODELS)),
    PipelineOption("distance_guess", "centre of the cluster-distance prior, pc [default: the peak of the "
                   "parallax distribution]", None, parse_positive),
    PipelineOption("keep_duplicates", "keep rows whose source_id repeats (else they are an error)", False, flag=True),
    PipelineOption("star_draws", "per-star distance and membership draws to store (0: summaries only)", 0, parse_count()),
)

SIMULATE_OPTIONS = (
    PipelineOption("num_stars", "number of stars", 500, parse_count()),
    PipelineOption("profile", "cluster profile: lognormal, gaussian or student (heavy tails)", "lognormal", parse_choice(*PROFILES)),
    PipelineOption("proper_motions", "add Gaia-like proper motions (pmra, pmdec, their errors and correlation): "
                   "the cluster's a common motion plus a small dispersion, the field's from Galactic-disc-like "
                   "tangential velocities at each star's distance", False, flag=True),
    PipelineOption("field", "the field's distances and magnitudes: model (the model's own r^2 exp(-r/L)) or disc "
                   "(a thin + thick Galactic disc towards M67 through G < 20.5, with a luminosity function)",
                   "model", parse_choice(*SIMULATED_FIELDS)),
)
