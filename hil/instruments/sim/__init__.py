"""Simulated bench instruments, served on loopback TCP and pseudo-terminals.

Each speaks the real command set of the instrument it stands for, quirks included,
so the drivers in :mod:`hil.instruments` run against them unchanged::

    from hil.instruments import open_power_supply
    from hil.instruments.sim import SimKoradPsu

    with SimKoradPsu() as sim, open_power_supply("korad", sim.tcp_url) as psu:
        sim.load_ohms = 12.0
        psu.set_voltage(12.0)
        psu.output(True)
        assert sim.output_on

They are used by the ``sim`` bench and by tests; faults are armed on
:attr:`SimInstrument.faults`.
"""

from hil.instruments.sim.base import Fault, SimFaults, SimInstrument, SimSession
from hil.instruments.sim.psu import PsuChannel, SimKoradPsu, SimScpiPsu
from hil.instruments.sim.relays import SimLcusBoard, SimNumatoBoard

__all__ = [
    "Fault",
    "PsuChannel",
    "SimFaults",
    "SimInstrument",
    "SimKoradPsu",
    "SimLcusBoard",
    "SimNumatoBoard",
    "SimScpiPsu",
    "SimSession",
]
