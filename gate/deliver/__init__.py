"""Recording and delivery: events as stored and published, the recorder, the ledger of releases, the durable
outbox (SQLite), its drainer to the broker and signed payloads (sealing). Its public face is `gate.mqtt_link`, the
MQTT link.
"""
