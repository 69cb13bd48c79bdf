"""CAN databases (DBC) of the simulated vehicles.

This package holds data only; :func:`path` finds a bundled file whether the
project runs from a checkout or from an installed wheel.
"""

from importlib import resources
from pathlib import Path

DEMO_VEHICLE = "demo_vehicle.dbc"


def path(name: str = DEMO_VEHICLE) -> Path:
    """Return the filesystem path of a bundled DBC file."""
    return Path(str(resources.files(__name__).joinpath(name)))
