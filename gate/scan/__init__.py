"""Capture: frame and line sources (Pi camera, serial QR module), QR decoding, presentation detection, the
installer's aiming aid, and synthetic frames for the demo, tests and benchmarks. Owned by the lane thread; yields
scans, nothing else.
"""
