"""The telematics gateway (TCU): UDS flasher and diagnostics towards the ECUs, backend client.

The tester side of the harness. :class:`~gateway.diag.DiagChannel` gives a
udsoncan client to one ECU over can-isotp on any python-can bus;
:class:`~gateway.flasher.Flasher` runs the ISO 14229 reprogramming sequence,
confirms new images and switches an ECU back to its previous image;
:class:`~gateway.backend.BackendClient` checks in with the OTA backend,
verifies releases and downloads artifacts with resume.
"""

from gateway.diag import DiagChannel
from gateway.errors import (
    DiagnosticError,
    DiagnosticTimeout,
    GatewayError,
    ImageRejected,
    RoutineRefused,
)
from gateway.flasher import (
    Flasher,
    FlashFailure,
    FlashProgress,
    FlashResult,
    FlashStep,
    RollbackResult,
)

__all__ = [
    "DiagChannel",
    "DiagnosticError",
    "DiagnosticTimeout",
    "FlashFailure",
    "FlashProgress",
    "FlashResult",
    "FlashStep",
    "Flasher",
    "GatewayError",
    "ImageRejected",
    "RollbackResult",
    "RoutineRefused",
]
