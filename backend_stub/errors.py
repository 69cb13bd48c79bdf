"""Exceptions of the backend: one root, each with the gRPC status it maps to.

The engine and the store raise these without knowing about gRPC; the service
layer turns ``code`` (a ``grpc.StatusCode`` name) into the call's status.
"""

from __future__ import annotations


class BackendError(Exception):
    """Root of every error raised by :mod:`backend_stub`."""

    code = "INTERNAL"


class InvalidArgument(BackendError, ValueError):
    """A request field is missing or malformed."""

    code = "INVALID_ARGUMENT"


class NotFound(BackendError, LookupError):
    """An id names nothing the backend knows."""

    code = "NOT_FOUND"


class AlreadyExists(BackendError):
    """The object to create exists already."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(BackendError):
    """The request is not allowed in the object's current state."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(BackendError, PermissionError):
    """The caller is known but may not do this."""

    code = "PERMISSION_DENIED"


class Unauthenticated(BackendError):
    """The caller presented no usable identity."""

    code = "UNAUTHENTICATED"


class ResourceExhausted(BackendError):
    """A size or quota limit was exceeded."""

    code = "RESOURCE_EXHAUSTED"


class OutOfRange(BackendError, IndexError):
    """An offset or index lies outside the object."""

    code = "OUT_OF_RANGE"


class StoreError(BackendError):
    """The database or the artifact store failed (not the caller's fault)."""

    code = "UNAVAILABLE"


class PkiError(BackendError):
    """Creating or loading certificates and keys failed."""

    code = "FAILED_PRECONDITION"


class ConfigError(BackendError, ValueError):
    """The backend's own configuration (listen address, files, keys) is unusable."""

    code = "FAILED_PRECONDITION"
