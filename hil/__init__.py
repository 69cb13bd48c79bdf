"""The ``hil`` command, bench configuration and everything that ties the parts together."""

__version__ = "0.1.0"
