#!/usr/bin/env python3
"""Decision to relay-on latency on gpiozero mock pins: gate's Actuator beside a naive background blink.

usage: bench/actuation.py [--runs N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory, MockPin

from _util import parse, pct, table
from gate.actuator import Actuator
from gate.config.model import GpioSection, parse_config
from gate.contracts import Release
from gate.core.clock import SystemClock
from gate.decide.codes import Status, issue
from gate.decide.keys import TrustStore
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

RELAY = 17


class StampedPin(MockPin):
    """Records when the pin went high."""

    on_at = 0.0

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed and value:
            StampedPin.on_at = time.perf_counter()
        return changed


def wait_on(deadline: float = 1.0) -> float:
    end = time.perf_counter() + deadline
    while StampedPin.on_at == 0.0 and time.perf_counter() < end:
        pass
    return StampedPin.on_at


def actuator_latency(runs: int) -> list[float]:
    act = Actuator(
        GpioSection.model_validate({"relay": {"pin": RELAY, "pulse_seconds": 0.001}}), MockFactory(pin_class=StampedPin)
    ).start()
    out = []
    for i in range(runs):
        act.wait_idle(1)
        StampedPin.on_at = 0.0
        t = time.perf_counter()
        act.release(Release(f"r{i}"))
        out.append((wait_on() - t) * 1000)
    act.close()
    return out


def naive_latency(runs: int) -> list[float]:
    relay = DigitalOutputDevice(RELAY, pin_factory=MockFactory(pin_class=StampedPin))
    out = []
    for _ in range(runs):
        relay.off()
        StampedPin.on_at = 0.0
        t = time.perf_counter()
        relay.blink(on_time=0.001, off_time=0, n=1, background=True)
        out.append((wait_on() - t) * 1000)
        time.sleep(0.003)
    relay.close()
    return out


def full_path_latency(runs: int, signed: bool = False) -> list[float]:
    """Payload in hand -> verify, decide, (sign,) durable outbox commit, relay on."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gate.decide.keys import generate_keypair

    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as d:
        device_key = str(generate_keypair(Path(d) / "device")[1]) if signed else None
        cfg = parse_config(
            {
                "gate": {"id": "b", "state_dir": d, "device_key": device_key},
                "venue": {"id": "v"},
                "policy": {"passback_seconds": 0},
                "gpio": {"relay": {"pin": RELAY, "pulse_seconds": 0.001}},
            }
        )
        gate = build(
            cfg,
            source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")),
            pin_factory=MockFactory(pin_class=StampedPin),
            clock=SystemClock("assume_synced"),
            trust=TrustStore.of([key.public_key()]),
            with_mqtt=False,
        ).start()
        now = int(time.time())
        gate.cache.apply_delta([], [], 0)
        codes = [issue(key, f"tok-{i:08d}", Status.GREEN, now, 600).encode() for i in range(runs)]
        out = []
        for c in codes:
            gate.actuator.wait_idle(1)
            StampedPin.on_at = 0.0
            t = time.perf_counter()
            gate.handle(c)
            out.append((wait_on() - t) * 1000)
        gate.close()
    return out


def seal_latency(runs: int) -> list[float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gate.deliver.sealing import Sealer, unseal

    key = Ed25519PrivateKey.generate()
    sealer = Sealer(key)
    payload = b'{"schema":"gate.checkin/1","event_id":"01936f2a-7c1e-7a3b-9f00-5d2c8e4b1a22","gate_id":"b"}'
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        sealed = sealer.seal(payload)
        out.append((time.perf_counter() - t) * 1000)
    assert unseal(sealed, {"b": key.public_key()}, "b").kid == sealer.kid  # the bench checks its own result
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1000)
    args = parse(ap, runs=50)
    rows = []
    for label, fn in (
        ("gate Actuator.release (relay on in caller)", actuator_latency),
        ("naive relay.blink(background=True)", naive_latency),
        ("gate full path: verify+decide+fsync'd outbox+relay", full_path_latency),
        ("  the same with a device key (signing is the drainer's)", lambda n: full_path_latency(n, signed=True)),
        ("  (signing one check-in, on the drainer thread)", seal_latency),
    ):
        ms = fn(args.runs)
        rows.append([label, f"{pct(ms, 50):.3f}", f"{pct(ms, 99):.3f}", f"{max(ms):.3f}"])
    print(f"Decision -> relay on, mock pins, {args.runs} runs (target: p99 <= 1 ms)")
    print(table(["path", "p50 ms", "p99 ms", "max ms"], rows))


if __name__ == "__main__":
    main()
