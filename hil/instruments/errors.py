"""Exceptions of the bench instruments, all under :class:`hil.errors.HilError`.

Every message is one line that names the port and, where there is one, the command,
so a bench log says what failed without a traceback.
"""

from __future__ import annotations

from hil.errors import HilError


class InstrumentError(HilError):
    """Root of every error raised by a power supply or relay board driver."""


class InstrumentPortError(InstrumentError, OSError):
    """The serial port could not be opened, or failed while in use."""


class InstrumentTimeoutError(InstrumentError, TimeoutError):
    """The instrument did not answer within the timeout."""


class InstrumentReplyError(InstrumentError):
    """The instrument answered something the driver cannot read (a garbled reply)."""


class InstrumentSettingError(InstrumentError, ValueError):
    """A value or channel is outside what the driver or the instrument accepts."""


class ScpiError(InstrumentError):
    """A SCPI instrument put an error in its error queue (read with ``SYST:ERR?``).

    ``code`` and ``message`` are the instrument's own (e.g. ``-222`` and
    ``Data out of range``); ``command`` is the command that caused it.
    """

    def __init__(self, text: str, *, code: int, message: str, command: str) -> None:
        super().__init__(text)
        self.code = code
        self.message = message
        self.command = command


class UnknownInstrumentError(InstrumentError, LookupError):
    """No driver is registered under the kind asked for."""


class DriverUnavailableError(InstrumentError, ImportError):
    """A driver is registered but cannot be loaded (e.g. its dependency is missing)."""
