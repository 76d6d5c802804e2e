"""Pure decision logic: no I/O, no clock, no logging, no third-party imports."""
