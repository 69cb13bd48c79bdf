"""The UDS server of a simulated ECU."""

from ecu_sim.uds.server import NegativeResponse, Nrc, Outgoing, UdsServer

__all__ = ["NegativeResponse", "Nrc", "Outgoing", "UdsServer"]
