"""Wire formats that the vehicle side and the cloud side must agree on.

Everything in here is a contract: the signed software image, the vehicle
description file, the UDS identifiers and record layouts of the simulated
vehicle, and the seed/key algorithm. Both ``ecu_sim`` and ``gateway`` (and later
the backend) use these definitions, so no format is implemented twice.
"""

from ota_formats.errors import (
    ImageFormatError,
    ImageIntegrityError,
    KeyFileError,
    OtaFormatError,
    SignatureError,
    VehicleFileError,
)
from ota_formats.image import (
    HEADER_SIZE,
    ImageHeader,
    SignedImage,
    build_image,
    parse_image,
    verify_image,
)
from ota_formats.vehicle import EcuSpec, VehicleSpec, load_vehicle

__all__ = [
    "HEADER_SIZE",
    "EcuSpec",
    "ImageFormatError",
    "ImageHeader",
    "ImageIntegrityError",
    "KeyFileError",
    "OtaFormatError",
    "SignatureError",
    "SignedImage",
    "VehicleFileError",
    "VehicleSpec",
    "build_image",
    "load_vehicle",
    "parse_image",
    "verify_image",
]
