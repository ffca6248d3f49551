"""Errors the engine reports to users: bad settings (exit status 2 from the CLI)."""

__all__ = ["OptionError"]


class OptionError(ValueError):
    """An unknown method, an unknown option or an option value of the wrong kind."""
