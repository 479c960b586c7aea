"""Recording and delivery: events as stored and published, the recorder, the durable outbox (SQLite), its drainer to
the broker, signed payloads (sealing) and the MQTT link.
"""
