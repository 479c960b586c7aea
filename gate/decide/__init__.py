"""The admission decision: the signed code format, keys and trust, the policy, and the pass cache with its
imports and snapshot staging (`passcache`, `passimport`, `staging`), and `gate verify`. The decision itself is
pure; the pass cache is SQLite, read by the lane thread and written by central-sync (or the snapshot child).
"""
