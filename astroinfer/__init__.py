"""astroinfer: Bayesian hierarchical modeling for astronomy.

>>> import astroinfer
>>> res = astroinfer.sample(model, data, method="nuts", seed=0, num_samples=1000)
>>> res.save("run.h5"); res = astroinfer.load("run.h5")

The names below are imported on first use, so ``import astroinfer`` (and the CLI's start,
which must set up JAX's devices before JAX is imported) stays light.
"""

from importlib import import_module as _import_module
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("astroinfer")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "sample": "astroinfer.engine",
    "sample_batch": "astroinfer.engine.batch",
    "method_defaults": "astroinfer.engine",
    "ConvergenceWarning": "astroinfer.engine",
    "ModelError": "astroinfer.engine",
    "OptionError": "astroinfer.engine",
    "Result": "astroinfer.result",
    "load": "astroinfer.result",
    "ResultFileError": "astroinfer.store",
    "run_pipeline": "astroinfer.pipeline",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'astroinfer' has no attribute {name!r}")


def __dir__():
    return __all__
