"""Exceptions of the gateway: one root, builtin mixins where they fit."""


class GatewayError(Exception):
    """Root of every error raised by :mod:`gateway`."""


class DiagnosticError(GatewayError):
    """A diagnostic request failed (negative response, timeout, invalid response)."""

    def __init__(self, message: str, *, nrc: int | None = None, timeout: bool = False) -> None:
        super().__init__(message)
        self.nrc = nrc
        self.timeout = timeout


class DiagnosticTimeout(DiagnosticError, TimeoutError):
    """The ECU did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, timeout=True)


class RoutineRefused(DiagnosticError):
    """A routine ran but its status record says it did not do what was asked."""

    def __init__(self, message: str, *, routine: int, status: int) -> None:
        super().__init__(message)
        self.routine = routine
        self.status = status


class ImageRejected(GatewayError, ValueError):
    """An image is unsuitable for the target before anything is sent."""


class BackendUnavailable(GatewayError, ConnectionError):
    """The backend could not be reached within the retry budget."""


class BackendRefused(GatewayError):
    """The backend answered a request with an error status."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class ReleaseRejected(GatewayError, ValueError):
    """A release or an artifact failed verification; nothing may be flashed from it."""
