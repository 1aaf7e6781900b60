"""prebookd: fires AimHarder prebookings at the instant booking opens."""

__version__ = "0.1.0"
