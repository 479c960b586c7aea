"""The MQTT link (paho-mqtt 2.x): connect, will and availability, publish, subscribe, stop."""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gate.config.model import MqttSection, secret_path
from gate.contracts import Topics
from gate.core.threads import background
from gate.deliver.failover import BrokerRotation
from gate.deliver.subacks import SubAcks

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., None])
RECEIVE_MAXIMUM = 8
BACKOFF = {"min_delay": 1, "max_delay": 30}  # seconds between reconnect attempts, doubling
Handler = Callable[[str, bytes, Callable[[], object]], None]  # (topic, payload, ack): call ack once it is handled


def guarded(fn: F) -> F:
    """An exception escaping a paho callback kills its network thread: log it instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("mqtt: callback %s failed", fn.__name__)

    return wrapper  # type: ignore[return-value]


def authenticate(client: mqtt.Client, cfg: MqttSection) -> None:
    """Username, password and TLS from the config: the same for a gate and for the central tools."""
    password = cfg.resolved_password()
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    tls = cfg.tls
    if tls is not None:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(secret_path(tls.key_file)) if tls.key_file else None,  # relative: a credential
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(tls.insecure)


class MqttLink:
    """Owns one paho client. `online` is published only after a successful CONNACK; the will says
    `offline`, and so does a clean stop (Home Assistant's default payloads; why it stopped goes in the retained
    state). MQTT 5 first, falling back to 3.1.1 if refused; under MQTT 5 every JSON payload carries the
    content type application/json."""

    def __init__(
        self,
        cfg: MqttSection,
        gate_id: str,
        on_publish: Callable[[int, str | None], None] | None = None,
        on_up: Callable[[], None] = lambda: None,
    ) -> None:
        self.cfg, self.gate_id = cfg, gate_id
        self.topics = Topics(cfg.topic_prefix, gate_id)
        self.up_listeners = [on_up]  # after each CONNACK, on paho's thread (state report, discovery)
        # Called on paho's thread with (mid, None) for each PUBACK, or (mid, reason) when the broker refused the
        # message (MQTT 5 only: under 3.1.1 a refusal looks like success). Listeners only note it and return.
        self.ack_listeners: list[Callable[[int, str | None], None]] = [on_publish] if on_publish else []
        self._subs: dict[str, Handler] = {}
        self.connected = threading.Event()
        self._down_since: float | None = time.monotonic()  # offline from the start until the first CONNACK
        self._down_total = 0.0
        self._ever_connected = self._falling_back = self._stopping = False
        self.connects = 0  # successful CONNACKs since start (more than one: reconnects); only paho's thread writes
        self.session_present = False  # the last CONNACK found this client's session at the broker
        self._closed_before_connack = 0
        self.generation = 0  # a new paho client (the 3.1.1 fallback) starts a new generation
        self._subacks = SubAcks()
        self.subscribed = self._subacks.ready  # every subscription of this connection has its SUBACK
        self.protocol = mqtt.MQTTv311 if cfg.protocol == "3.1.1" else mqtt.MQTTv5
        self.brokers = BrokerRotation(cfg.endpoints())
        self._connect_kwargs: dict[str, Any] = {}
        self._replacing = False  # the 3.1.1 fallback swaps the client: the old one's goodbye is not a failover
        self.client = self._build()
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._json_props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self._json_props.ContentType = "application/json"

    def _build(self) -> mqtt.Client:
        v5 = self.protocol == mqtt.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"gate-{self.gate_id}",
            protocol=self.protocol,
            clean_session=None if v5 else False,
            manual_ack=True,  # an inbound message is acknowledged once handled (a cache change: committed)
        )
        client.max_inflight_messages_set(self.cfg.inflight_window)
        client.reconnect_delay_set(**BACKOFF)
        client.will_set(self.topics.availability, b"offline", qos=1, retain=True)
        authenticate(client, self.cfg)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_pre_connect = self.brokers.attempting
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def start(self) -> None:
        """Connect in the background; paho's loop reconnects with backoff after any loss."""
        kwargs: dict[str, Any] = {}
        if self.protocol == mqtt.MQTTv5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600  # keep our QoS 1 session across short outages
            # Inbound messages are acked only once handled (manual ack), so this bounds what central can have
            # in flight to us: a snapshot's chunks wait at the broker instead of filling the gate's memory.
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            kwargs["properties"] = props
            kwargs["clean_start"] = False
        self._connect_kwargs = kwargs
        host, port = self.brokers.current
        self.client.connect_async(host, port, keepalive=self.cfg.keepalive, **kwargs)
        self.client.loop_start()

    @property
    def broker(self) -> str:
        """The broker this gate is on (or trying next), "host:port"."""
        return self.brokers.label

    def _fail_over(self, client: mqtt.Client) -> None:
        """paho's thread, after a lost connection or a failed attempt: with several hosts, aim paho's own
        reconnect at the next one (it re-sends what it held in flight; `_on_connect` resubscribes)."""
        if self.brokers.several and not self._stopping and client is self.client and not self._replacing:
            self.brokers.aim_next(client, self.cfg.keepalive, self._connect_kwargs)

    @guarded
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._fail_over(client)

    @guarded
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        background()  # paho's network thread: delivery is background work beside the lane
        if reason.is_failure:
            log.error("mqtt: broker %s refused the connection: %s", self.broker, reason)
            if reason.value in (1, 0x84):
                self._maybe_fall_back('it refused MQTT 5 with "unsupported protocol version"')
            return
        self._ever_connected = True
        self.session_present = bool(getattr(flags, "session_present", False))  # read by up listeners
        self.connects += 1
        self.brokers.connected()
        if not self.refusals_visible:
            log.warning(
                "mqtt: MQTT 3.1.1 cannot report a refused publish (a denied one looks delivered); use MQTT 5 "
                "with ACLs so that refusals become dead letters instead of silent losses"
            )
        log.info("mqtt: connected to %s (MQTT %s)", self.broker, "5" if self.protocol == mqtt.MQTTv5 else "3.1.1")
        client.publish(self.topics.availability, b"online", qos=1, retain=True)
        self._subacks.reset()
        for topic in list(self._subs):
            self._subscribe(topic)
        self._subacks.check()
        self.connected.set()
        if self._down_since is not None:
            self._down_total += time.monotonic() - self._down_since
            self._down_since = None
        for listener in self.up_listeners:
            listener()

    @property
    def refusals_visible(self) -> bool:
        """Whether the broker can tell us it refused a publish (MQTT 5 reason codes)."""
        return self.protocol == mqtt.MQTTv5

    def _maybe_fall_back(self, why: str) -> None:
        """protocol = "auto": speak MQTT 3.1.1 to a broker that will not take MQTT 5 (once, on a helper thread)."""
        if self.cfg.protocol != "auto" or self.protocol != mqtt.MQTTv5 or self._falling_back:
            return
        self._falling_back = True
        log.warning(
            "mqtt: broker %s does not take MQTT 5 (%s); falling back to MQTT 3.1.1",
            self.broker,
            why,
        )
        threading.Thread(target=self._fall_back, name="mqtt-fallback", daemon=True).start()

    def _fall_back(self) -> None:
        self._replacing = True
        self.client.loop_stop()
        self.client.disconnect()
        self.protocol = mqtt.MQTTv311
        self.client = self._build()
        self._replacing = False
        self.generation += 1  # what the old client held in flight is gone with it
        self.start()

    @guarded
    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected.is_set():  # cleared first by stop(), so a clean stop is not reported here
            log.warning("mqtt: disconnected (%s); reconnecting", reason)
        elif not self._ever_connected and not self._stopping:
            self._closed_before_connack += 1
            if self._closed_before_connack >= 2:  # RabbitMQ drops an MQTT 5 CONNECT without a word
                self._maybe_fall_back("it closed the connection on an MQTT 5 CONNECT, twice, without a CONNACK")
            elif self.protocol == mqtt.MQTTv5:
                # Confirm soon, not after the backoff an outage built up (up to 30 s): the broker is there now.
                client.reconnect_delay_set(**BACKOFF)
        self._fail_over(client)
        self.connected.clear()
        self.subscribed.clear()
        if self._down_since is None:
            self._down_since = time.monotonic()

    def offline_seconds(self) -> tuple[float, float]:
        """(seconds offline since start, of which the current outage): a bus's link comes and goes."""
        since, now = self._down_since, time.monotonic()
        current = 0.0 if since is None else now - since
        return round(self._down_total + current, 1), round(current, 1)

    def _subscribe(self, topic: str) -> None:
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._subacks.sent(mid)

    @guarded
    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._subacks.acked(mid)

    @guarded
    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        refused = str(reason) if reason.is_failure else None
        for listener in self.ack_listeners:
            listener(mid, refused)

    @guarded
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        ack = functools.partial(client.ack, msg.mid, msg.qos)
        for pattern, handler in list(self._subs.items()):  # the sync worker may subscribe meanwhile
            if mqtt.topic_matches_sub(pattern, msg.topic):
                handler(msg.topic, bytes(msg.payload), ack)
                return
        ack()

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._subs[topic] = handler
        if self.connected.is_set():
            self.subscribed.clear()
            self._subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        if self._subs.pop(topic, None) is not None and self.connected.is_set():
            self.client.unsubscribe(topic)

    def force_reconnect(self, why: str) -> None:
        """Drop the connection under paho (from any thread): its loop sees the socket fail, reconnects with
        backoff and re-sends what it holds in flight."""
        sock = self.client.socket()
        if not isinstance(sock, socket.socket):  # not connected (or a websocket wrapper: left to paho's keepalive)
            return
        log.warning("mqtt: dropping the connection (%s); reconnecting", why)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Hand a JSON message to paho (kept in memory and re-sent across reconnects)."""
        props = self._json_props if self.protocol == mqtt.MQTTv5 else None
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("mqtt: publish to %s not queued: %s", topic, mqtt.error_string(info.rc))
        return info

    def stop(self, timeout: float = 1.0) -> None:
        """Say `offline` (retained), then disconnect without triggering the will."""
        self._stopping = True
        if self.connected.is_set():
            self.connected.clear()
            info = self.client.publish(self.topics.availability, b"offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
