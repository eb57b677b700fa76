"""pi-dash: the dashboard and command line over :mod:`core`'s ``FleetSnapshot``."""

__version__ = "0.1.0"
