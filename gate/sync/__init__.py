"""Central to gate: the sync worker (snapshots, deltas, policy, keys, commands), the signed control envelope,
snapshot application in a child process, and the bounded inbound queue.
"""
