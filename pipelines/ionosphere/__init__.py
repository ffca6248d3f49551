"""ionosphere: differential TEC (and clock) per time, station, direction and polarisation.

Every (time, ant, dir, pol) cell of a LOFAR h5parm phase soltab is one small problem: the
phase in each channel is::

    phi(nu) = -8.4479745e9 * dTEC / nu + 2 pi nu tau + phi0        (dTEC in TECU, nu in Hz)

observed modulo 2 pi. **Likelihood** on the unit circle: each unflagged channel's phase is
von Mises about phi(nu) with concentration ``kappa``, chosen so that the von Mises has the
same mean resultant length as a wrapped normal of sd ``phase_noise`` (radians):
``I1(kappa)/I0(kappa) = exp(-phase_noise^2 / 2)``. Flagged channels (weight 0, or NaN
phase) are left out.

**Priors**: dTEC ~ Uniform(-dtec_max, dtec_max) TECU; phi0 ~ Uniform(-pi, pi); tau ~
Uniform(-clock_max, clock_max) seconds (``--fit-clock``).

**phi0 is integrated out exactly**: with S(dTEC, tau) = sum_k kappa_k exp(i (phi_k -
phi_model_k)) the likelihood marginal over a uniform phi0 is
``I0(|S|) / prod_k (2 pi I0(kappa_k))``, evaluated stably as ``log i0e(|S|) + |S|``. That
leaves dTEC one-dimensional (two with the clock), so the batch engine integrates it
exactly on a grid; the grid kernel computes S on all nodes of a chunk with one real matrix
product against a shared basis. ``phi0`` is reported from the conditional posterior
(its circular mean at the dTEC posterior mean).

**Reference station**: h5parm phases are already differences to a reference station; its
own problems are all zero phase and carry no information (they come out with dTEC = 0 and
are flagged when every phase is exactly zero). ``--ref-ant NAME`` subtracts that station's
phases first (per time, dir, pol).

The package's modules:

- :mod:`.options`: the name and the run and simulate options (no heavy imports);
- :mod:`.data`: :func:`load` (read and check the h5parm phases), ``TEC_CONSTANT`` and
  :func:`kappa_from_noise`;
- :mod:`.phase_model`: the likelihood, the NumPyro models and the grid kernels (JAX);
- :mod:`.h5parm`: reading and writing h5parm files (h5py);
- :mod:`.smooth`: the optional smoothing stage (tinygp);
- :mod:`.simulation`: :func:`simulate` (its truth file at :func:`truth_path`, from :mod:`astroinfer.tables`);
- :mod:`.report`: ``show``, ``summarise`` and the dTEC plot;
- :mod:`.inference`: the ``sample`` hook (the batch run, the h5parm, the result file).

The model's, the simulator's and the hook's modules are not called ``model``, ``simulate``
and ``sample``: importing a submodule sets it as the package's attribute of that name,
which would replace the function the package exports.

Importing the package imports numpy only (and :mod:`.options` and :mod:`.report`), because
the CLI imports it to list the pipelines: the modules that need SciPy, h5py, JAX, NumPyro or
tinygp are imported when first used (:mod:`astroinfer.lazy`).
"""

from __future__ import annotations

from astroinfer.lazy import OnFirstUse, lazy_names
from astroinfer.pipeline import Pipeline
from astroinfer.pipelines.ionosphere.options import LOAD_DEFAULTS, NAME, RUN_OPTIONS, SIMULATE_OPTIONS
from astroinfer.pipelines.ionosphere.report import plot_dtec, show, summarise

__all__ = ["PIPELINE", "TEC_CONSTANT", "model_dtec", "model_dtec_phi0", "model_dtec_clock", "DTEC_KERNEL",
           "DTEC_CLOCK_KERNEL", "kappa_from_noise", "load", "model", "simulate", "summarise", "show", "plot_dtec",
           "sample", "truth_path", "log_likelihood_phi0_marginal", "smooth_screen", "smoothed_screen",
           "read_phases", "write_h5parm", "write_solutions", "PhaseTable", "PROBLEM_AXES", "RUN_OPTIONS",
           "SIMULATE_OPTIONS", "LOAD_DEFAULTS", "NAME"]


load = OnFirstUse(__name__, "data", "load")
model = OnFirstUse(__name__, "phase_model", "model")
simulate = OnFirstUse(__name__, "simulation", "simulate")
sample = OnFirstUse(__name__, "inference", "sample")

# Other names of the heavy modules (tests, benchmarks and notebooks use them), by module.
_ON_FIRST_USE = {
    "data": ("TEC_CONSTANT", "kappa_from_noise"),
    "phase_model": ("log_likelihood_phi0_marginal", "model_dtec", "model_dtec_phi0", "model_dtec_clock",
                    "DTEC_KERNEL", "DTEC_CLOCK_KERNEL"),
    "simulation": ("truth_path",),
    "smooth": ("smooth_screen", "smoothed_screen"),
    "h5parm": ("PhaseTable", "read_phases", "write_h5parm", "write_solutions", "PROBLEM_AXES"),
}
__getattr__, __dir__ = lazy_names(__name__, _ON_FIRST_USE, globals())


PIPELINE = Pipeline(
    name=NAME,
    description="LOFAR h5parm phases -> dTEC (+clock) per time/station/dir/pol: exact batched grid, Dask, resumable",
    load=load,
    model=model,
    simulate=simulate,
    summarise=summarise,
    demo_file="ionosphere_demo.h5",
    demo_seed=4,
    module_file=__file__,
    options=RUN_OPTIONS,
    simulate_options=SIMULATE_OPTIONS,
    sample=sample,
    show=show,
    plots={"dtec": plot_dtec},
    batch=True,
    # Problems of one or two parameters: exact quadrature (--method grid), with batched
    # nested sampling where the grid does not resolve a posterior, or batched nested sampling
    # of every problem (--method nested). The batch engine's NUTS does not suit these
    # multimodal posteriors (its R-hat flags most of them).
    methods=("grid", "nested"),
    default_method="grid",
)
