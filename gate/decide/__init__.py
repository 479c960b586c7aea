"""The admission decision: the signed code format, keys and trust, the policy, the pass cache (reader on the lane
thread) and its imports, and `gate verify`. Pure of I/O but the pass cache's reads.
"""
