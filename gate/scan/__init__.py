"""Capture: frame and line sources (Pi camera, serial QR module), QR decoding, presentation detection, the
installer's aiming aid, and synthetic frames for the demo, tests and benchmarks. Its public face is `gate.scanner`
(one scan per presentation). Owned by the lane thread; yields scans, nothing else.
"""
