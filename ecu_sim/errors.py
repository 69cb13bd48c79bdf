"""Exceptions of the ECU simulator: one root, builtin mixins where they fit."""


class EcuSimError(Exception):
    """Root of every error raised by :mod:`ecu_sim`."""


class NvmError(EcuSimError, OSError):
    """The non-volatile memory of an ECU could not be read or written."""


class FaultSpecError(EcuSimError, ValueError):
    """A fault description (e.g. from the command line) is malformed."""


class EcuStateError(EcuSimError, RuntimeError):
    """An operation does not fit the ECU's current state (e.g. powered off)."""
