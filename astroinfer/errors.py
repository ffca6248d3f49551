"""Every error and warning type astroinfer raises: a leaf module that imports nothing.

Each layer raises its own kind (the engine ``OptionError``/``ModelError``, the store
``ResultFileError``, pipelines ``InputError``/``OutputError``), and the CLI turns every
subclass of :data:`USER_ERRORS` into one line on stderr with exit status 2. Keeping them all
here lets any layer catch another layer's error without importing that layer.
"""

from __future__ import annotations

__all__ = [
    "OptionError", "ModelError", "ConvergenceWarning", "ResultFileError", "ResumeError",
    "PipelineError", "InputError", "UnknownPipelineError", "OutputError", "PipelineLoadError",
    "SchedulerError", "USER_ERRORS",
]


class OptionError(ValueError):
    """An unknown method, an unknown option or an option value of the wrong kind."""


class ModelError(ValueError):
    """The model cannot be run by the engine (a clear, user-facing reason)."""


class ConvergenceWarning(UserWarning):
    """Poor convergence: R-hat, divergences, low ESS or a large evidence error."""


class ResultFileError(ValueError):
    """A result file is missing, unreadable or not an astroinfer result."""


class ResumeError(ResultFileError):
    """A partial batch file cannot be resumed with these settings."""


class PipelineError(ValueError):
    """Base of the user-facing pipeline errors (bad name, bad input, bad output path)."""


class InputError(PipelineError):
    """An input file (or load option) is missing, unreadable or fails validation.

    The message is one line: the file, the column or option, and what was expected.
    """


class UnknownPipelineError(PipelineError):
    """No pipeline of that name is registered."""


class OutputError(PipelineError):
    """The output path cannot be written (missing folder, a folder, the input itself)."""


class PipelineLoadError(RuntimeError):
    """A registered pipeline failed to import or is not a pipeline object (a broken install)."""


class SchedulerError(PipelineError):
    """The Dask scheduler cannot be reached or started."""


#: Errors that are the user's to fix: the CLI prints them as one line and exits with 2.
USER_ERRORS: tuple[type[BaseException], ...] = (OptionError, ModelError, ResultFileError, PipelineError)
