"""gate: firmware service for unattended station turnstiles."""

__version__ = "0.1.0"
