"""SimPy scenarios for flashing, rollback and fleet campaigns.

:mod:`scenarios.core` holds the framework (time modes, event log, checks),
:mod:`scenarios.registry` finds scenarios by name and reads scenario files,
:mod:`scenarios.wire` builds the real backend, gateways and simulated vehicles
in one process, and :mod:`scenarios.builtin` holds the scenarios ``hil
scenario list`` shows.
"""
