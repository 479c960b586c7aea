"""`gate central publish-delta --follow`: deltas fed line by line on stdin, each signed, published on one kept
MQTT connection and confirmed on stdout once acknowledged; a bad line stops the feed with nothing after it
published. Real mosquitto (and a real gate)."""

from __future__ import annotations

import io
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_sync import settle

from conftest import Broker, free_port, make_config, wait_until
from fakes import started_gate
from gate.central.deltafeed import FeedError, follow
from gate.central.deltaline import parse
from gate.central.mqtt import publisher
from gate.central.publish import signed_body
from gate.decide.codes import check_token
from gate.decide.passimport import MAX_LINE_BYTES
from gate.sync.envelope import sign
from gate.sync.snapapply import parse_row
from gate.sync.worker import central_topics

pytestmark = pytest.mark.slow
TOPICS = central_topics("gate")


class Feed:
    """The command running, fed line by line; its stdout lines read as they come (a reader thread, to EOF)."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "gate", "central", "publish-delta", "--follow", *args]
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=pipe, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def send(self, delta: dict[str, Any] | str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((delta if isinstance(delta, str) else json.dumps(delta)) + "\n")
        self.proc.stdin.flush()

    def printed(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next line it prints (a delta acknowledged); fails if none comes."""
        return dict(json.loads(self.lines.get(timeout=timeout)))

    def end(self, timeout: float = 60.0) -> tuple[int, str]:
        """Close its stdin (end of input): its exit code and stderr."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        self.reader.join(timeout)
        return rc, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def feeds() -> Any:
    started: list[Feed] = []

    def make(*args: str) -> Feed:
        started.append(Feed(*args))
        return started[-1]

    yield make
    for f in started:
        f.kill()


def delta(seq: int, base: int = 7, revoke: str | None = None, delete: str | None = None) -> dict[str, Any]:
    upserts = [{"token": revoke or f"tok-{seq:06d}", "status": "red", "revoked": True}]
    return {"base_version": base, "seq": seq, "upserts": upserts, "deletes": [delete] if delete else []}


def in_force(broker: Any, keys: Any, version: int = 7, prefix: str = "gate") -> None:
    """A snapshot of `version` in force: its signed manifest retained at the broker."""
    manifest = {"version": version, "count": 0, "chunks": 1, "sha256": ""}
    with publisher((broker.host, broker.port)) as pub:
        pub(central_topics(prefix)["manifest"], sign(keys.private, "manifest", manifest), True)


def seqs(sub: Any, keys: Any, topic: str = TOPICS["delta"]) -> list[int]:
    """The seq of every delta the subscriber received signed by central's key, in order."""
    bodies = [signed_body(p, keys.private) for p in sub.on(topic)]
    return [int(b["seq"]) for b in bodies if b is not None and b["type"] == "delta"]


@pytest.mark.mosquitto_only("reads mosquitto's log for which connection published each delta")
def test_each_delta_is_published_as_its_line_arrives_and_all_on_one_connection(
    tmp_path: Path, keys: Any, subscriber_factory: Any, feeds: Any
) -> None:
    log = tmp_path / "mosquitto.log"
    broker = Broker(tmp_path, extra=f"log_dest file {log}\nlog_type all\n")
    broker.start()
    try:
        in_force(broker, keys)
        sub = subscriber_factory(broker, TOPICS["delta"])
        feed = feeds("--broker", f"{broker.host}:{broker.port}", "--key", str(keys.private_path))
        for seq in (1, 2, 3):
            feed.send(delta(seq))  # stdin stays open: each is out before the end of input
            assert feed.printed() == {"base_version": 7, "seq": seq, "upserts": 1, "deletes": 0}
            assert wait_until(lambda seq=seq: seqs(sub, keys) == list(range(1, seq + 1)))
        feed.send("")  # a blank line is skipped
        assert feed.end() == (0, "")
        text = wait_until(lambda: log.read_text().count("'gate/central/passes/delta'") >= 3 and log.read_text())
        publishers = re.findall(r"Received PUBLISH from (\S+) \(d0, q1, r0, m\d+, 'gate/central/passes/delta'", text)
        assert len(publishers) == 3 and len(set(publishers)) == 1, publishers
        assert text.count("New client connected from 127.0.0.1:") >= 2  # the version check's, then the feed's
        assert len(re.findall(rf"New client connected from \S+ as {re.escape(publishers[0])} ", text)) == 1
    finally:
        broker.stop()


def test_a_gate_applies_the_deltas_fed(tmp_path: Path, keys: Any, broker: Any, feeds: Any) -> None:
    b, key = f"{broker.host}:{broker.port}", str(keys.private_path)
    mqtt = {"host": broker.host, "port": broker.port}
    cfg = make_config(tmp_path / "state", keys, mqtt=mqtt, central={"keys": [str(keys.public_path)]})
    gate = started_gate(cfg)
    try:
        passes = tmp_path / "passes.csv"
        passes.write_text("token,status\ntok-keep01,green\ntok-revoke,green\ntok-delete,green\n")
        snapshot = [sys.executable, "-m", "gate", "central", "publish-snapshot", str(passes), "--version", "9"]
        r = subprocess.run([*snapshot, "--broker", b, "--key", key], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert settle(gate, lambda: gate.cache.info().version == 9 and gate.cache.info().count == 3)
        feed = feeds("--broker", b, "--key", key)
        feed.send(delta(1, base=9, revoke="tok-revoke"))
        assert feed.printed()["seq"] == 1
        assert settle(gate, lambda: gate.cache.info().seq == 1)
        entry = gate.cache.lookup("tok-revoke")
        assert entry is not None and entry.revoked
        feed.send({"base_version": 9, "seq": 2, "deletes": ["tok-delete"]})
        assert feed.printed() == {"base_version": 9, "seq": 2, "upserts": 0, "deletes": 1}
        assert settle(gate, lambda: gate.cache.info().seq == 2 and gate.cache.lookup("tok-delete") is None)
        assert gate.cache.lookup("tok-keep01") is not None
        assert feed.end() == (0, "")
    finally:
        gate.close()


def test_a_base_version_other_than_the_snapshot_in_force_is_refused(
    keys: Any, broker: Any, subscriber_factory: Any, feeds: Any
) -> None:
    in_force(broker, keys, version=7)
    sub = subscriber_factory(broker, TOPICS["delta"])
    feed = feeds("--broker", f"{broker.host}:{broker.port}", "--key", str(keys.private_path))
    feed.send(delta(1, base=7))
    assert feed.printed()["seq"] == 1
    feed.send(delta(2, base=6))
    rc, err = feed.end()
    assert rc == 1 and err.count("\n") == 1
    assert "line 2: base_version 6 is not the snapshot in force (7)" in err and "(1 delta before it" in err
    marker_published(broker, TOPICS["delta"], sub)
    assert seqs(sub, keys) == [1]


def test_a_seq_not_above_the_previous_is_refused(keys: Any, broker: Any, subscriber_factory: Any, feeds: Any) -> None:
    sub = subscriber_factory(broker, TOPICS["delta"])  # no snapshot in force: the first line's base holds
    feed = feeds("--broker", f"{broker.host}:{broker.port}", "--key", str(keys.private_path))
    for seq in (4, 5):
        feed.send(delta(seq, base=3))
        assert feed.printed()["seq"] == seq
    feed.send(delta(5, base=3))
    feed.send(delta(6, base=3))
    rc, err = feed.end()
    assert rc == 1 and "line 3: seq 5 is not above the previous delta's (5)" in err
    marker_published(broker, TOPICS["delta"], sub)
    assert seqs(sub, keys) == [4, 5]


def marker_published(broker: Any, topic: str, sub: Any) -> None:
    """A marker after everything the feed sent (its connection is closed): once the subscriber has it, it has
    whatever the feed published before."""
    with publisher((broker.host, broker.port)) as pub:
        pub(topic, b"marker", False)
    assert wait_until(lambda: b"marker" in sub.on(topic))


def _bad_line(kind: str, last: int | None) -> bytes:
    good = delta((last or 0) + 1)
    bad: dict[str, Any] | None = None
    if kind == "seq_repeated" and last is not None:
        bad = delta(last)
    elif kind == "base":
        bad = delta((last or 0) + 1, base=8)
    elif kind == "unknown_field":
        bad = {**good, "version": 8}
    elif kind == "seq_text":
        bad = {**good, "seq": str((last or 0) + 1)}
    elif kind == "seq_missing":
        bad = {k: v for k, v in good.items() if k != "seq"}
    elif kind == "bad_status":
        bad = {**good, "upserts": [{"token": "tok-000099", "status": "blue"}]}
    elif kind == "bad_token":
        bad = {**good, "deletes": ["no"]}
    elif kind == "twice":
        bad = {**good, "deletes": [good["upserts"][0]["token"]]}
    elif kind == "oversized":
        return json.dumps({**good, "deletes": ["tok-000099"] * (MAX_LINE_BYTES // 12)}).encode()
    elif kind == "not_utf8":
        return b'{"base_version": 7, "seq": 1, "deletes": ["tok-\xff\xfe0001"]}'
    elif kind == "array":
        return b"[7, 1]"
    return json.dumps(bad).encode() if bad is not None else b"{not json"


BAD_KINDS = [
    "seq_repeated",
    "base",
    "unknown_field",
    "seq_text",
    "seq_missing",
    "bad_status",
    "bad_token",
    "twice",
    "oversized",
    "not_utf8",
    "array",
    "not_json",
]
junk = st.binary(min_size=1, max_size=200).filter(
    lambda b: b"\n" not in b and bool(b.decode("utf-8", "replace").strip()) and b.strip()[:1] != b"{"
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    good=st.integers(0, 3),
    kind=st.sampled_from(BAD_KINDS) | junk,
    blank=st.booleans(),
)
def test_a_bad_line_stops_the_feed_with_everything_before_it_published_and_nothing_after(
    broker: Any, keys: Any, subscriber_factory: Any, good: int, kind: str | bytes, blank: bool
) -> None:
    prefix = f"p{uuid.uuid4().hex[:10]}"  # each example its own topics on the one broker
    topic = central_topics(prefix)["delta"]
    sub = subscriber_factory(broker, topic)
    lines = [json.dumps(delta(seq)).encode() for seq in range(1, good + 1)]
    lines += [b"   "] if blank else []
    lines.append(kind if isinstance(kind, bytes) else _bad_line(kind, good or None))
    lines.append(json.dumps(delta(good + 50)).encode())  # a good line after it: never published
    out = io.StringIO()
    with pytest.raises(FeedError) as refused:
        follow((broker.host, broker.port), topic, keys.private, 7, io.BytesIO(b"\n".join(lines) + b"\n"), out, 10.0)
    number = good + 1 + blank
    assert refused.value.line == number and f"line {number}: " in str(refused.value)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 400 and "published (" in str(refused.value)
    assert [json.loads(x)["seq"] for x in out.getvalue().splitlines()] == list(range(1, good + 1))
    marker_published(broker, topic, sub)
    assert seqs(sub, keys, topic) == list(range(1, good + 1))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


good_tokens = st.sampled_from([f"tok-{i:06d}" for i in range(30)])
tokens = st.one_of(good_tokens, good_tokens, good_tokens, st.sampled_from(["Ab_-9z", "12345678", "x", ""]), st.text())
records = st.fixed_dictionaries(
    {"token": tokens, "status": st.sampled_from(["green", "yellow", "red", "blue"])},
    optional={
        "revoked": st.sampled_from([True, False, "yes", 1, 2]),
        "valid_until": st.integers(-1, 2**41),
        "companions": st.integers(-1, 20),
    },
)
near_deltas = st.fixed_dictionaries(  # mostly good, so that both answers are tried
    {"base_version": st.integers(-1, 9) | st.integers(-1, 2**64), "seq": st.integers(-1, 10)},
    optional={"upserts": st.lists(records, max_size=3), "deletes": st.lists(tokens, max_size=3)},
)
noisy = st.fixed_dictionaries(
    {},
    optional={
        "base_version": json_values,
        "seq": json_values,
        "upserts": st.lists(st.dictionaries(st.sampled_from(["token", "status"]), json_values)) | json_values,
        "deletes": json_values,
        "version": json_values,
    },
)


@settings(max_examples=300)
@given(doc=near_deltas | noisy | json_values)
def test_any_json_line_is_either_a_delta_every_gate_takes_or_refused_with_a_reason(doc: Any) -> None:
    try:
        d = parse(json.dumps(doc).encode())
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert d is not None and isinstance(doc, dict) and d.seq >= 1 and 0 <= d.base_version < 2**63
    event(f"accepted with {len(d.upserts)} upserts")
    body = json.loads(json.dumps(d.body()))  # as a gate reads it: each row and token passes the gate's own checks
    assert [parse_row(r) for r in body["upserts"]] == list(d.upserts)
    assert [check_token(t) for t in body["deletes"]] == list(d.deletes)
    assert len({r[0] for r in d.upserts} | set(d.deletes)) == len(d.upserts) + len(d.deletes)


def test_a_delta_the_broker_does_not_acknowledge_in_time_stops_the_feed_naming_its_seq(
    tmp_path: Path, keys: Any, feeds: Any
) -> None:
    broker = Broker(tmp_path)
    broker.start()
    try:
        feed = feeds("--broker", f"{broker.host}:{broker.port}", "--key", str(keys.private_path), "--ack-timeout", "3")
        feed.send(delta(1))
        assert feed.printed()["seq"] == 1
    finally:
        broker.stop()
    feed.send(delta(2))
    rc, err = feed.end()
    assert rc == 1 and "delta seq 2 was not acknowledged within 3s" in err and "every delta before it was" in err


def test_the_feed_reconnects_by_itself_after_the_broker_comes_back(tmp_path: Path, keys: Any, feeds: Any) -> None:
    broker = Broker(tmp_path)
    broker.start()
    try:
        feed = feeds("--broker", f"{broker.host}:{broker.port}", "--key", str(keys.private_path))
        feed.send(delta(1))
        assert feed.printed()["seq"] == 1
        broker.stop()
        broker.start()  # the same port
        feed.send(delta(2))  # queued while paho reconnects, sent once it is back
        assert feed.printed()["seq"] == 2
        assert feed.end() == (0, "")
    finally:
        broker.stop()


def test_with_several_hosts_the_deltas_go_to_the_first_that_answers(
    tmp_path: Path, keys: Any, broker: Any, subscriber_factory: Any, feeds: Any
) -> None:
    config = tmp_path / "central.toml"
    config.write_text(f'[mqtt]\nhosts = ["127.0.0.1:{free_port()}", "{broker.host}:{broker.port}"]\n')
    sub = subscriber_factory(broker, TOPICS["delta"])
    feed = feeds("--config", str(config), "--key", str(keys.private_path))
    feed.send(delta(1))
    assert feed.printed()["seq"] == 1
    assert feed.end() == (0, "")
    assert wait_until(lambda: seqs(sub, keys) == [1])


def test_a_node_of_several_hosts_lost_mid_feed_is_left_for_the_next(
    tmp_path: Path, keys: Any, subscriber_factory: Any, feeds: Any
) -> None:
    first, second = Broker(tmp_path / "a"), Broker(tmp_path / "b")
    for b in (first, second):
        b.workdir.mkdir()
        b.start()
    try:
        config = tmp_path / "central.toml"
        config.write_text(f'[mqtt]\nhosts = ["127.0.0.1:{first.port}", "127.0.0.1:{second.port}"]\n')
        on_first, on_second = subscriber_factory(first, TOPICS["delta"]), subscriber_factory(second, TOPICS["delta"])
        feed = feeds("--config", str(config), "--key", str(keys.private_path))
        feed.send(delta(1))
        assert feed.printed()["seq"] == 1 and wait_until(lambda: seqs(on_first, keys) == [1])
        first.stop()
        feed.send(delta(2))  # waits while the first node is gone, then goes to the second
        assert feed.printed()["seq"] == 2 and wait_until(lambda: seqs(on_second, keys) == [2])
        rc, err = feed.end()
        assert rc == 0 and f"connection lost; now on 127.0.0.1:{second.port}" in err
    finally:
        first.stop()
        second.stop()


def test_sigterm_stops_the_feed_cleanly_saying_what_was_published(keys: Any, broker: Any, feeds: Any) -> None:
    feed = feeds("--broker", f"{broker.host}:{broker.port}", "--key", str(keys.private_path))
    feed.send(delta(1))
    assert feed.printed()["seq"] == 1
    feed.proc.send_signal(signal.SIGTERM)
    assert feed.proc.wait(30) == 143
    assert feed.proc.stderr is not None
    err = feed.proc.stderr.read()
    assert "stopped after 1 delta, each acknowledged" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--follow", "--seq", "2"], "--follow reads every delta from standard input: leave out --seq"),
        (["--follow", "x.csv", "--base-version", "1"], "leave out FILE, --base-version"),
        (["--base-version", "1"], "the following arguments are required: --seq"),
        ([], "the following arguments are required: --base-version, --seq"),
        (["--base-version", "1", "--seq", "1", "--ack-timeout", "5"], "--ack-timeout is for --follow"),
    ],
)
def test_the_follow_and_one_shot_forms_are_not_mixed(args: list[str], says: str) -> None:
    cmd = [sys.executable, "-m", "gate", "central", "publish-delta", *args, "--broker", "127.0.0.1:1", "--key", "k"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and says in r.stderr
