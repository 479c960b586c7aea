"""Start-up, step by step: every part is built once, complete, in dependency order."""

from __future__ import annotations

import logging
import queue
from typing import Any

from gate.actuator import Actuator, make_pin_factory
from gate.app import Gate
from gate.clock import Clock, SystemClock
from gate.config import Config
from gate.control import Verifier
from gate.decision import Decider
from gate.decoders import make_decoder
from gate.delivery import Drainer
from gate.keys import TrustStore, load_public_key
from gate.lanecontrol import Inbox, LaneControl
from gate.mqtt_link import MqttLink
from gate.outbox import Outbox
from gate.passcache import PassCache
from gate.policy import PolicyStore
from gate.recorder import Recorder
from gate.reporting import Reporter
from gate.scanner import CodeSource, DecodingSource, Deduplicator, ImageSource, Scanner
from gate.sync import CentralSync, central_keys
from gate.telemetry import Stats

log = logging.getLogger(__name__)


def make_source(cfg: Config) -> CodeSource:
    """The configured source; hardware libraries are imported inside their adapters."""
    sc = cfg.scanner
    if sc.source == "serial":
        from gate.serial_source import SerialScanner

        return SerialScanner(sc.serial)
    decoder = make_decoder(sc.decoder, sc.formats)
    if sc.source == "images":
        assert sc.images_path is not None
        return DecodingSource(ImageSource([sc.images_path]), decoder)
    from gate.camera import PiCamera

    return DecodingSource(PiCamera(sc.camera), decoder)


def source_counters(source: CodeSource) -> dict[str, int]:
    """For telemetry: camera restarts or serial reconnects, and serial lines dropped."""
    restarts = getattr(getattr(source, "frames", source), "restarts", 0) + getattr(source, "reconnects", 0)
    return {"source_restarts": int(restarts), "dropped_lines": int(getattr(source, "dropped_lines", 0))}


def build(
    cfg: Config,
    source: CodeSource | None = None,
    pin_factory: Any = None,
    clock: Clock | None = None,
    trust: TrustStore | None = None,
    with_mqtt: bool = True,
) -> Gate:
    state = cfg.gate.state_dir
    state.mkdir(parents=True, exist_ok=True)
    inbox: Inbox = queue.SimpleQueue()
    control = LaneControl(inbox)
    clock = clock or SystemClock(cfg.clock.sync_source)
    base_keys = list(trust.keys.values()) if trust is not None else [load_public_key(p) for p in cfg.trust.keys]
    policy = PolicyStore(state / "device.json", cfg.policy).load()
    cache = PassCache(state / "passes.db")
    decider = Decider(
        TrustStore.of([*base_keys, *central_keys(state)]),
        policy,
        cache.lookup,
        cache.info,
        cfg.scanner.max_payload_bytes,
    )
    outbox = Outbox(state / "outbox.db", cfg.outbox)
    code_source = source or make_source(cfg)
    scanner = Scanner(code_source, Deduplicator(cfg.scanner.rearm_seconds, cfg.scanner.absent_seconds))
    factory = pin_factory if pin_factory is not None else make_pin_factory(cfg.gpio.pin_factory)
    actuator = Actuator(cfg.gpio, factory, control.post, control.post)
    link = MqttLink(cfg.mqtt, cfg.gate.id, on_up=control.report) if with_mqtt else None
    drainer = Drainer(outbox, link, cfg.mqtt.inflight_window) if link is not None else None
    recorder = Recorder(cfg, outbox, clock, drainer.wake if drainer is not None else lambda: None)
    sync = None
    if link is not None and cfg.central.keys:
        verifier = Verifier(
            TrustStore.from_files(cfg.central.keys),
            cfg.gate.id,
            cfg.central.max_message_bytes,
            cfg.central.command_max_age_seconds,
        )
        sync = CentralSync(control, link, verifier, base_keys, cfg)
    elif link is not None:
        log.warning("no [central] keys pinned: pass status, policy and commands from central are ignored")
    stats = Stats()
    reporter = Reporter(
        cfg,
        cache,
        outbox,
        decider,
        actuator,
        clock,
        recorder,
        stats,
        link,
        sync.status if sync is not None else None,
        lambda: source_counters(code_source),
    )
    gate = Gate(
        cfg, scanner, decider, cache, outbox, actuator, clock, recorder, reporter, inbox, stats, link, drainer, sync
    )
    if sync is not None:
        sync.start()
    if drainer is not None:
        drainer.start()
    if link is not None:
        link.start()
    return gate
