"""Exceptions of the ``hil`` package: one root, builtin mixins where they fit."""


class HilError(Exception):
    """Root of every error raised by :mod:`hil`."""


class UsageError(HilError, ValueError):
    """A command-line argument or option value is invalid."""


class BusError(HilError, OSError):
    """The CAN bus could not be opened."""
