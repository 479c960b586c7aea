"""The lane itself: the `Gate` loop (scan, decide, record, actuate), the requests other threads send it (`control`),
its safety state on disk (`state`), state files at start-up, construction (`wiring`) and the daemon's life.
"""
