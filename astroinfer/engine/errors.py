"""The engine's error types (defined in the leaf module :mod:`astroinfer.errors`)."""

from astroinfer.errors import ConvergenceWarning, ModelError, OptionError

__all__ = ["OptionError", "ModelError", "ConvergenceWarning"]
