"""astroinfer: Bayesian hierarchical modeling for astronomy.

>>> import astroinfer
>>> res = astroinfer.sample(model, data, method="nuts", seed=0, num_samples=1000)
>>> res.save("run.h5"); res = astroinfer.load("run.h5")
"""

from importlib import metadata as _metadata

from astroinfer.engine import ConvergenceWarning, ModelError, OptionError, method_defaults, sample
from astroinfer.result import Result
from astroinfer.store import ResultFileError, load

try:
    __version__ = _metadata.version("astroinfer")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def run_pipeline(name, input=None, out=None, method="nuts", seed=0, **options):
    """Load ``input`` with pipeline ``name``, sample, summarise, save to ``out``; return the Result."""
    from astroinfer.pipeline import run_pipeline as _run

    return _run(name, input, out=out, method=method, seed=seed, **options)


__all__ = [
    "sample", "load", "run_pipeline", "Result", "method_defaults",
    "ConvergenceWarning", "ModelError", "OptionError", "ResultFileError", "__version__",
]
