"""Start-up, step by step: every part is built once, complete, in dependency order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gate.actuate.pins import make_pin_factory
from gate.actuator import Actuator
from gate.config.model import Config, secret_path
from gate.config.venue import MOBILE
from gate.contracts import Alarm, Inbox, LaneControl, make_inbox
from gate.core import reserve
from gate.core.clock import Clock, SystemClock
from gate.core.docstore import DocStore
from gate.core.faults import Faults
from gate.core.supervisor import Supervisor
from gate.core.threads import LaneFirst, lane_switching
from gate.decide.decision import Decider
from gate.decide.keys import TrustStore, load_private_key, load_public_key
from gate.decide.passcache import PassCache
from gate.decide.policy import PolicyStore
from gate.deliver.delivery import Drainer
from gate.deliver.ledger import Ledger
from gate.deliver.outbox import Outbox
from gate.deliver.recorder import Recorder
from gate.deliver.sealing import Sealer
from gate.lane.lifecycle import Threads, recovery_alarm, restart_alarm
from gate.lane.loop import Gate
from gate.lane.state import LaneState
from gate.lane.statefiles import Recovery, Startup, check_device_doc, check_lane_state, open_outbox, open_pass_cache
from gate.mqtt_link import MqttLink
from gate.ops.homeassistant import Discovery
from gate.ops.reporting import Reporter
from gate.ops.telemetry import Stats
from gate.scan.decoders import make_decoder
from gate.scan.motion import SceneWatch
from gate.scanner import CodeSource, DecodingSource, Deduplicator, ImageSource, Scanner
from gate.sync.envelope import Verifier
from gate.sync.worker import CentralSync, central_keys
from gate.venue.gps import Gps

log = logging.getLogger(__name__)


def make_source(cfg: Config) -> CodeSource:
    """The configured source; hardware libraries are imported inside their adapters."""
    sc = cfg.scanner
    if sc.source == "serial":
        from gate.scan.serial_source import SerialScanner

        return SerialScanner(sc.serial)
    decoder = make_decoder(sc.decoder, sc.formats)
    if sc.source == "images":
        assert sc.images_path is not None
        return DecodingSource(ImageSource([sc.images_path], sc.max_image_pixels), decoder)
    from gate.scan.camera import PiCamera

    return DecodingSource(
        PiCamera(sc.camera, open_now=False), decoder, SceneWatch() if sc.camera.skip_unchanged_frames else None
    )


def source_counters(source: CodeSource) -> dict[str, int]:
    """For telemetry: camera restarts or serial reconnects, and serial lines dropped."""
    restarts = getattr(getattr(source, "frames", source), "restarts", 0) + getattr(source, "reconnects", 0)
    return {"source_restarts": int(restarts), "dropped_lines": int(getattr(source, "dropped_lines", 0))}


@dataclass(frozen=True)
class Core:
    """The parts every other part is given: the lane's inbox and the fault and scheduling rules."""

    inbox: Inbox
    control: LaneControl
    faults: Faults
    lane_first: LaneFirst


@dataclass(frozen=True)
class StateFiles:
    """The state files, checked and repaired before any connection is made; none is opened here."""

    startup: Startup
    cache: PassCache
    outbox: Outbox
    lanestate: LaneState
    base_keys: list[Any]


def build(
    cfg: Config,
    source: CodeSource | None = None,
    pin_factory: Any = None,
    clock: Clock | None = None,
    trust: TrustStore | None = None,
    with_mqtt: bool = True,
    heartbeat: Callable[[], None] = lambda: None,
) -> Gate:
    """Every part built once, complete, given its collaborators, in dependency order. Building opens no
    connection and starts no thread: `Gate.start()` does, on the thread that runs the lane. `heartbeat` is
    called on each turn of the scan loop (systemd's watchdog under `gate run`)."""
    core = make_core()
    gps = Gps(cfg.gps, core.control.post) if cfg.gps.port else None
    clock = clock or SystemClock(cfg.clock.sync_source, gps_offset=gps.clock_offset if gps is not None else None)
    files = check_state_files(cfg, trust, core.faults)
    ledger = Ledger()  # the releases waiting for their passages: written by the recorder, read by the decider
    decider = make_decider(cfg, files, ledger)
    code_source = source or make_source(cfg)
    scanner = Scanner(code_source, Deduplicator(cfg.scanner.rearm_seconds, cfg.scanner.absent_seconds))
    factory = pin_factory if pin_factory is not None else make_pin_factory(cfg.gpio.pin_factory)
    actuator = Actuator(cfg.gpio, factory, core.control.post, core.control.post)
    supervisor = Supervisor(restart_alarm(core.control), recovery_alarm(core.control))
    threads = Threads(actuator, supervisor, gps=gps)
    sealer = Sealer(load_private_key(secret_path(cfg.gate.device_key))) if cfg.gate.device_key else None
    if with_mqtt:
        wire_mqtt(cfg, core, files, sealer, threads)
    recorder = make_recorder(cfg, files, clock, decider, gps, threads, sealer, ledger)
    counters = partial(source_counters, code_source)
    reporter = make_reporter(cfg, core, files, decider, threads, recorder, clock, counters)
    parts = (scanner, decider, files.cache, files.outbox, actuator, clock, recorder, reporter, core.inbox)
    return Gate(
        cfg,
        *parts,
        reporter.stats,
        files.lanestate,
        core.faults,
        threads,
        files.startup,
        lane_first=core.lane_first,
        heartbeat=heartbeat,
        metrics_listen=cfg.metrics.listen or None,
        source_counters=counters,
    )


def make_core() -> Core:
    inbox = make_inbox()
    control = LaneControl(inbox)
    lane_switching()

    def fault(what: str, on: bool, detail: str) -> None:
        """The `fault` alarm: raised when an episode of failing work starts, cleared when none is left."""
        control.post(Alarm("fault", on, detail))

    return Core(inbox, control, Faults(on_episode=fault), LaneFirst())  # the lane decides before delivery and sync


def check_state_files(cfg: Config, trust: TrustStore | None, faults: Faults) -> StateFiles:
    """Each file checked without keeping a connection: a corrupt one moved aside (and the outbox's rows
    salvaged); the seals are proven later, by the lane thread (`Gate.start()`)."""
    state = cfg.gate.state_dir
    state.mkdir(parents=True, exist_ok=True)
    reserve.install(state, int(cfg.gate.reserve_mb * (1 << 20)))  # before any state file: room for safety
    recovery = Recovery()
    check_device_doc(state / "device.json", recovery)
    cache_lost = open_pass_cache(state / "passes.db", recovery)
    lane_lost = check_lane_state(state / "lane.db", recovery)
    outbox = open_outbox(state / "outbox.db", cfg.outbox, recovery)
    base_keys = list(trust.keys.values()) if trust is not None else [load_public_key(p) for p in cfg.trust.keys]
    startup = Startup(recovery, cache_lost=cache_lost, lane_lost=lane_lost)
    lanestate = LaneState(state / "lane.db", faults)
    return StateFiles(startup, PassCache(state / "passes.db"), outbox, lanestate, base_keys)


def make_decider(cfg: Config, files: StateFiles, ledger: Ledger) -> Decider:
    state = cfg.gate.state_dir
    policy = PolicyStore(state / "device.json", cfg.policy).load()
    keys = TrustStore.of([*files.base_keys, *central_keys(state)])
    cache = files.cache
    return Decider(keys, policy, cache.lookup, cache.info, cfg.scanner.max_payload_bytes, ledger.letting_through)


def wire_mqtt(cfg: Config, core: Core, files: StateFiles, sealer: Sealer | None, threads: Threads) -> None:
    """The link, the drainer, central's sync worker and Home Assistant discovery: built, not started."""
    control, link = core.control, MqttLink(cfg.mqtt, cfg.gate.id, on_up=core.control.report)
    threads.link = link

    def dead(n: int, detail: str) -> None:
        control.post(Alarm("dead_letter", True, detail))

    def stalled(on: bool, detail: str) -> None:
        control.post(Alarm("delivery_stalled", on, detail))

    threads.drainer = Drainer(
        files.outbox,
        link,
        cfg.mqtt.inflight_window,
        cfg.mqtt.max_refusals,
        dead,
        sealer,
        core.lane_first,
        core.faults,
        max(2.0 * cfg.mqtt.keepalive, 10.0),
        stalled,
    )
    if cfg.central.keys:
        verifier = Verifier(
            TrustStore.from_files(cfg.central.keys),
            cfg.gate.id,
            cfg.central.max_message_bytes,
            cfg.central.command_max_age_seconds,
            DocStore(cfg.gate.state_dir / "device.json", "command_nonces"),
            cfg.central.command_ahead_seconds,
        )
        threads.sync = CentralSync(control, link, verifier, files.base_keys, cfg, core.lane_first, core.faults)
    else:
        log.warning("no [central] keys pinned: pass status, policy and commands from central are ignored")
    discovery = Discovery(cfg, link)
    link.up_listeners.append(discovery.connected)
    threads.discovery = discovery


def make_recorder(
    cfg: Config,
    files: StateFiles,
    clock: Clock,
    decider: Decider,
    gps: Gps | None,
    threads: Threads,
    sealer: Sealer | None,
    ledger: Ledger,
) -> Recorder:
    drainer = threads.drainer
    return Recorder(
        cfg,
        files.outbox,
        clock,
        drainer.wake if drainer is not None else lambda: None,
        position=where(cfg, gps),
        stops=lambda route: decider.policy.stops.get(route, ()),  # the policy in force, central's
        venue=cfg.venue.venue(),  # with the trip central set since: Gate.start() reads it on the lane thread
        send_now=send_now(threads.link, sealer),
        ledger=ledger,
    )


def make_reporter(
    cfg: Config,
    core: Core,
    files: StateFiles,
    decider: Decider,
    threads: Threads,
    recorder: Recorder,
    clock: Clock,
    counters: Callable[[], dict[str, int]],
) -> Reporter:
    return Reporter(
        cfg,
        files.cache,
        files.outbox,
        lambda: decider.policy,  # the policy in force, central's
        threads.actuator,
        clock,
        recorder,
        Stats(),
        link=threads.link,
        sync_status=threads.sync.status if threads.sync is not None else None,
        lanestate=files.lanestate,
        faults=core.faults,
        source_counters=counters,
        queues=(core.inbox, threads.actuator.events),
    )


def send_now(link: MqttLink | None, sealer: Sealer | None) -> Callable[[str, bytes], object]:
    """Publish outside the outbox (an alarm the full disk cannot store yet), signed as the drainer signs."""
    if link is None:
        return lambda topic, payload: None
    return lambda topic, payload: link.publish(topic, sealer.seal(payload) if sealer else payload, qos=1)


def where(cfg: Config, gps: Gps | None) -> Callable[[], dict[str, Any] | None]:
    """Where a check-in was made: the receiver's last fix; a vehicle without a receiver says so."""
    if gps is not None:
        return gps.position
    if cfg.venue.category in MOBILE:
        return lambda: {"fix": False, "why": "no_gps"}
    return lambda: None
