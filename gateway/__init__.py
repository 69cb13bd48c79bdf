"""The telematics gateway (TCU): UDS flasher and diagnostics towards the ECUs, backend client.

The tester side of the harness. :class:`~gateway.diag.DiagChannel` gives a
udsoncan client to one ECU over can-isotp on any python-can bus;
:class:`~gateway.flasher.Flasher` runs the ISO 14229 reprogramming sequence;
:class:`~gateway.backend.BackendClient` checks in with the OTA backend,
verifies releases and downloads artifacts with resume.
"""

from gateway.diag import DiagChannel
from gateway.errors import DiagnosticError, DiagnosticTimeout, GatewayError, ImageRejected
from gateway.flasher import Flasher, FlashFailure, FlashProgress, FlashResult, FlashStep

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
]
