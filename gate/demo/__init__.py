"""`gate demo`: the whole gate on any machine, simulated camera and mock pins; the bus variant with a recorded GPS
track.
"""
