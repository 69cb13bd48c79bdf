"""Exceptions of the bench configuration and its instruments, under :class:`hil.errors.HilError`.

Two families, which the ``hil`` command tells apart by exit status:

- :class:`BenchConfigError` (exit 2): the configuration is wrong. Its message starts
  with the file, the line and the key, e.g.
  ``hil.toml:14: benches.lab.ecus.bms.request_id: Input should be a valid integer``.
- :class:`BenchFailure` (exit 1): the bench did not do what was asked: it is not
  running, the supply is outside the flashing window, a flash was declined.
  Instrument errors (:class:`~hil.instruments.InstrumentError`) count as failures too.
"""

from __future__ import annotations

from dataclasses import dataclass

from hil.errors import HilError, UsageError


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file: where it is and what is wrong."""

    file: str | None
    """The file as the user named it (``None``: not from a file)."""
    line: int | None
    key: str
    """Dotted key, e.g. ``benches.lab.ecus.bms.request_id`` (empty: the whole file)."""
    message: str

    def __str__(self) -> str:
        where = ":".join(str(part) for part in (self.file, self.line) if part is not None)
        parts = [part for part in (where, self.key, self.message) if part]
        return ": ".join(parts)


class BenchError(HilError):
    """Root of every error raised by :mod:`hil.bench`."""


class BenchConfigError(BenchError, ValueError):
    """The bench configuration is invalid; :attr:`issues` lists every problem found.

    The message is the first issue (with a count of the others) on its first line,
    then every issue on a line of its own.
    """

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue | str) -> None:
        if isinstance(issues, str):
            issues = ConfigIssue(None, None, "", issues)
        if isinstance(issues, ConfigIssue):
            issues = [issues]
        if not issues:
            raise ValueError("a BenchConfigError needs at least one issue")
        self.issues = list(issues)
        first = str(self.issues[0])
        if len(self.issues) > 1:
            first += f" (and {len(self.issues) - 1} more)"
            rest = "\n".join(f"  {issue}" for issue in self.issues)
            super().__init__(f"{first}\n{rest}")
        else:
            super().__init__(first)


class UnknownBenchError(BenchConfigError, LookupError):
    """No bench has the name asked for."""


class BenchPartMissing(BenchError, LookupError):
    """The bench has no such part: no power supply, relay line or ECU of that name."""


class BenchFailure(BenchError):
    """The bench did not do what was asked (the ``hil`` command exits with status 1)."""


class BenchNotRunningError(BenchFailure, ConnectionError):
    """The simulated bench process is not running, so its bus and instruments are absent."""


class FlashSafetyError(BenchFailure):
    """A flash was stopped by a safety check before anything was sent to the ECU."""


class SupplyVoltageError(FlashSafetyError):
    """The supply voltage is outside the bench's flashing window (or its output is off).

    ``problem`` is ``"undervoltage"``, ``"overvoltage"`` or ``"output off"``.
    """

    def __init__(
        self,
        message: str,
        *,
        problem: str,
        measured_v: float,
        min_v: float | None,
        max_v: float | None,
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.measured_v = measured_v
        self.min_v = min_v
        self.max_v = max_v


class FlashDeclined(FlashSafetyError):
    """The operator answered no when asked to confirm a flash."""


class ConfirmationRequired(BenchError, UsageError):
    """A flash on a real bench needs confirmation, and none can be asked (not a terminal).

    A usage error (exit 2): pass ``--yes`` (or ``yes=True``) to flash unattended.
    """
