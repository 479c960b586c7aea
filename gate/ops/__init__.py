"""What operators and maintainers see: the state document, status file and telemetry (reporting), Prometheus metrics,
Home Assistant discovery, `gate status` and pre-flight checks.
"""
