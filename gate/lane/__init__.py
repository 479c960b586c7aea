"""The lane itself: the `Gate` loop (scan, decide, record, actuate) with its start and close (`loop`), the threads
beside it (`lifecycle`), its safety state on disk (`state`), state files at start-up (`statefiles`), construction
(`wiring`) and the daemon's life (`daemon`). Other threads reach the lane through `gate.contracts.LaneControl`.
"""
