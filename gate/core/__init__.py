"""Infrastructure every stage uses and none owns: errors, addresses, thread-owned SQLite connections and
transactions, thread priorities, the fault episodes, logging, atomic small documents, the clock, systemd's notify
protocol and bounded mailboxes between threads.
"""
