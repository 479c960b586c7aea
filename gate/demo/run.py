"""`gate demo`: the whole gate on any machine: simulated camera, mock pins, optional real broker."""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.contracts import PassageOutcome
from gate.core.clock import SystemClock
from gate.decide.base45 import b45decode, b45encode
from gate.decide.codes import PREFIX, Kind, Status, issue
from gate.decide.decision import Decision
from gate.decide.keys import TrustStore, generate_keypair, load_private_key
from gate.deliver.events import CheckIn, short
from gate.demo.bus import TrackPlayer
from gate.demo.config import PASSAGE, demo_config
from gate.demo.output import Printer
from gate.lane.loop import Gate
from gate.lane.wiring import build
from gate.ops.metrics import scrape
from gate.scan.decoders import Frame, make_decoder
from gate.scan.framegen import code_frame
from gate.scan.motion import SceneWatch
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

FPS = 20.0


@dataclass(frozen=True)
class Sample:
    label: str
    text: str
    walk: bool = True  # whether the simulated passengers walk through when released
    look: dict[str, Any] | None = None  # how the frame is distorted


def samples(keydir: Path, gate: Gate) -> list[Sample]:
    """One round of passes, with fresh random tokens so rounds do not trip anti-passback."""
    key = load_private_key(next(keydir.glob("*.key")))
    other = load_private_key(next((keydir / "untrusted").glob("*.key")))
    now = int(time.time())

    def tok() -> str:
        return "d" + secrets.token_urlsafe(9).replace("-", "x").replace("_", "y")

    t_ok = tok()
    t_red = tok()
    t_rev = tok()
    t_card = tok()
    t_staff = tok()
    t_yel = tok()
    gate.cache.apply_delta([(t_rev, 0, None, 1, None), (t_card, 0, now + 86_400 * 365, 0, 1)], [], seq=1)
    ok = issue(key, t_ok, Status.GREEN, now - 10, 300)
    raw = bytearray(b45decode(ok[len(PREFIX) :]))
    raw[-1] ^= 0x01  # one flipped bit in the signature
    forged = PREFIX + b45encode(bytes(raw))
    return [
        Sample("phone, green", ok),
        Sample("phone + 2 companions", issue(key, tok(), Status.GREEN, now - 5, 300, companions=2)),
        Sample("dark-mode screen", issue(key, tok(), Status.GREEN, now, 300), look={"invert": True}),
        Sample("same phone again", ok),
        Sample("expired phone", issue(key, tok(), Status.GREEN, now - 4000, 600)),
        Sample("tampered code", forged),
        Sample("code from an unknown key", issue(other, tok(), Status.GREEN, now, 300)),
        Sample("phone, red", issue(key, t_red, Status.RED, now, 300)),
        Sample("revoked in cache", issue(key, t_rev, Status.GREEN, now, 300)),
        Sample(
            "printed card (+1)",
            issue(key, t_card, Status.GREEN, now - 86_400, 86_400 * 365, kind=Kind.CARD),
            look={"angle": 20},
        ),
        Sample("phone, yellow", issue(key, t_yel, Status.YELLOW, now, 300)),
        Sample("staff code after assist", issue(key, t_staff, Status.GREEN, now, 3600, kind=Kind.STAFF)),
        Sample("admitted, nobody walks", issue(key, tok(), Status.GREEN, now, 300), walk=False),
        Sample("not a gate code", "HELLO-WORLD"),
    ]


class PacedFrames(ScriptedFrames):
    """The scripted camera at FPS, remembering which sample is before it (for the demo's table)."""

    name = "demo-camera"

    def __init__(self) -> None:
        super().__init__(fps=FPS)
        self.current: Sample | None = None

    def _take(self, item: tuple[Sample | None, Frame]) -> Frame:
        self.current, frame = item
        return frame


def _frames(keydir: Path, gate: Gate, once: bool) -> Iterator[tuple[Sample | None, Frame]]:
    blank = code_frame(None)
    while True:
        for s in samples(keydir, gate):
            frame = code_frame(s.text, **(s.look or {}))
            for _ in range(4):
                yield s, frame
            for _ in range(int(FPS * (2.0 if s.walk else 2.2))):
                yield None, blank
        if once:
            return


class Walker:
    """Simulated passengers: after each relay release, someone walks through the passage sensor."""

    def __init__(self, gate: Gate, frames: PacedFrames) -> None:
        self.pins = gate.actuator.relay.pin_factory
        self.frames = frames

    def on_relay(self) -> None:
        if self.frames.current is not None and not self.frames.current.walk:
            return
        sensor = self.pins.pin(PASSAGE)
        threading.Timer(0.15, sensor.drive_low).start()
        threading.Timer(0.35, sensor.drive_high).start()


def show_decision(out: Printer, source: PacedFrames, d: Decision, ev: CheckIn, gate: Gate) -> None:
    label = source.current.label if source.current else "?"
    relay = "released" if gate.actuator.relay.value else "locked"
    light = {"admit": "green", "assist": "amber", "deny": "red"}[d.action.value]
    extra = f" +{d.companions}" if d.companions else ""
    text = (
        f"{label:<26} token {short(d.token):<6} {d.action.value.upper():<6} {d.reason.value:<18}"
        f" relay {relay:<8} light {light:<5}{extra:<3} check-in {ev.event_id[:13]} stored"
    )
    out.emit(
        text,
        "decision",
        label=label,
        token=short(d.token),
        decision=d.action.value,
        reason=d.reason.value,
        relay=relay,
        light=light,
        companions=d.companions,
        event_id=ev.event_id,
        **({"venue": ev.venue.as_json(), "position": ev.position} if ev.position is not None else {}),
    )


def show_passage(out: Printer, o: PassageOutcome) -> None:
    out.emit(f"{'':<26} passage {o.index}: {o.outcome}", "passage", decision_id=o.ref, index=o.index, outcome=o.outcome)


def show_delivered(out: Printer, ids: list[str]) -> None:
    text = f"{'':<26} delivered: broker acked check-in {', '.join(i[:13] for i in ids)}"
    out.emit(text, "delivered", event_ids=ids)


def run_demo(
    once: bool,
    broker: tuple[str, int] | None,
    timeout: float,
    state_dir: Path | None,
    as_json: bool = False,
    metrics: str = "",
    venue: str = "station",
) -> int:
    out = Printer(as_json)
    try:
        player = TrackPlayer() if venue == "bus" else None
        try:
            return _run(out, once, broker, timeout, state_dir, metrics, player.path if player else "")
        finally:
            if player is not None:
                player.close()
    finally:
        out.close()


def _run(
    out: Printer,
    once: bool,
    broker: tuple[str, int] | None,
    timeout: float,
    state_dir: Path | None,
    metrics: str,
    gps: str,
) -> int:
    with tempfile.TemporaryDirectory(prefix="gate-demo-") as tmp:
        state = state_dir or Path(tmp)
        keydir = state / "keys"
        if not any(keydir.glob("*.key")):
            generate_keypair(keydir)
            generate_keypair(keydir / "untrusted")
        cfg = demo_config(state, broker, metrics, gps)
        trust = TrustStore.from_files(keydir.glob("*.pub"))
        frames = PacedFrames()
        source = DecodingSource(frames, make_decoder("auto"), SceneWatch())
        gate = build(cfg, source=source, clock=SystemClock("assume_synced"), trust=trust, with_mqtt=broker is not None)
        frames.feed(_frames(keydir, gate, once))
        gate.cache.apply_delta([], [], seq=0)  # the demo's cache counts as freshly synced
        walker = Walker(gate, frames)
        logging.getLogger("gate.lane.loop").setLevel(logging.WARNING)  # the table below says it better
        where = f"{broker[0]}:{broker[1]}" if broker else None
        out.emit(
            f"gate demo: lane {cfg.gate.id} at {cfg.venue.name}"
            + (f" ({cfg.venue.vehicle_id}, route {cfg.venue.route}, GPS track on {gps})" if gps else "")
            + "; "
            f"broker {where or 'none (check-ins stay in the outbox)'}",
            "start",
            gate_id=cfg.gate.id,
            venue=cfg.venue.id,
            broker=where,
        )
        if metrics:
            out.emit(f"gate demo: Prometheus metrics at http://{metrics}/metrics, health at /healthz", "metrics")
        if broker:
            prefix = cfg.homeassistant.prefix
            out.emit(f"gate demo: Home Assistant discovery under {prefix}/+/gate_{cfg.gate.id}/#", "discovery")
        gate.listeners.append(lambda scan, d, ev: show_decision(out, frames, d, ev, gate))
        gate.outcome_listeners.append(lambda o: show_passage(out, o))
        gate.actuator.pulse_listeners.append(walker.on_relay)
        if gate.drainer is not None:
            gate.drainer.listeners.append(lambda ids: show_delivered(out, ids))
        try:
            gate.run(frames.done)
            if metrics:  # what a Prometheus scrape gets now, as proof that it works
                sample = scrape(f"http://{metrics}/metrics")
                text = f"gate demo: /metrics serves {len(sample)} samples, e.g. {next(iter(sample), '')}"
                out.emit(text, "scraped", samples=sample)
            return _finish(out, gate, where, timeout)
        except KeyboardInterrupt:
            out.emit("\ngate demo: stopped", "stopped")
            return 0
        finally:
            gate.close()


def _finish(out: Printer, gate: Gate, where: str | None, timeout: float) -> int:
    gate.actuator.wait_idle(timeout)
    gate.pump()  # record the last passages
    if gate.drainer is None:
        depth = gate.outbox.depth
        out.emit(
            f"gate demo: done; {depth} check-ins wait in the outbox (no broker)", "done", ok=True, undelivered=depth
        )
        return 0
    total = gate.outbox.depth + gate.drainer.delivered
    if gate.drainer.wait_empty(timeout):
        out.emit(
            f"gate demo: done; all {total} check-ins and alarms acknowledged by the broker {where}",
            "done",
            ok=True,
            acknowledged=total,
        )
        return 0
    depth = gate.outbox.depth
    out.emit(
        f"gate demo: timed out after {timeout:.0f}s with {depth} check-ins not acknowledged",
        "done",
        ok=False,
        undelivered=depth,
    )
    return 1
