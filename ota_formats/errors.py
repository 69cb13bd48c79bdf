"""Exceptions of the shared formats package: one root, builtin mixins where they fit."""


class OtaFormatError(Exception):
    """Root of every error raised by :mod:`ota_formats`."""


class ImageFormatError(OtaFormatError, ValueError):
    """The bytes are not a signed image of a format this package knows."""


class ImageIntegrityError(OtaFormatError, ValueError):
    """The payload does not match the length or SHA-256 its header states."""


class SignatureError(OtaFormatError):
    """The header signature does not verify against any trusted key."""


class KeyFileError(OtaFormatError, ValueError):
    """A key file or key string could not be read."""


class VehicleFileError(OtaFormatError, ValueError):
    """A vehicle description file is missing, unreadable or invalid."""


class ReleaseFormatError(OtaFormatError, ValueError):
    """Release metadata is not a well-formed manifest."""
