"""NATS with JetStream: one connection per service that reconnects forever, stream declarations, publishing.

The connection never gives up (``max_reconnect_attempts=-1``): a NATS outage shows in health's
``parapet.dependencies`` for its duration and then everything resumes; durable delivery (outbox relays,
JetStream acks) is what makes sure nothing is lost meanwhile, not the connection. A service's start does not
wait for NATS either (``Bus.start``): after a bounded wait it serves and goes on connecting in the background.

A NATS that comes back without its store (an emptyDir, a wiped volume) has no streams and no durable
consumers any more. The bus remembers the streams it declared: a publish that no stream takes declares the
one covering its subject again and is retried once (``publish``); pull consumers subscribe through
``parapet.kit.durable``, which declares their stream and durable again after a failed fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NoStreamResponseError, NotFoundError

from parapet.kit.logging import OncePer
from parapet.kit.redact import redact_url
from parapet.kit.timeouts import cancel_and_wait, within

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
WARN_EVERY_SECONDS = 30.0  # a failure repeating through an outage is logged at most this often
CLOSE_STEP_SECONDS = 5.0


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream a service declares at start: created with this configuration; an existing one
    gets this spec's subjects, duplicate window and description, and keeps its limits (``ensure_stream``)."""

    name: str
    subjects: tuple[str, ...]
    retention: Literal["limits", "interest", "workqueue"] = "limits"
    storage: Literal["file", "memory"] = "file"
    max_age_seconds: float | None = None  # None: keep until other limits apply
    max_bytes: int | None = None
    # Messages with a Nats-Msg-Id seen within this window are dropped as duplicates (exactly-once publish).
    duplicate_window_seconds: float = 120.0
    replicas: int = 1
    description: str | None = None

    def to_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=RetentionPolicy(self.retention),
            storage=StorageType(self.storage),
            max_age=self.max_age_seconds,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_seconds,
            num_replicas=self.replicas,
        )


def message_size(payload: bytes, headers: Mapping[str, str] | None = None, msg_id: str | None = None) -> int:
    """What a NATS server counts against its ``max_payload``: the payload and the header block as HPUB sends it
    (``msg_id`` as ``Nats-Msg-Id``, as :meth:`Bus.publish` adds it). nats-py checks the payload alone before
    sending; a message whose headers take it over the limit is sent, and the server answers "Maximum Payload
    Violation" and closes the connection: :meth:`Bus.publish` checks it before sending."""
    all_headers = dict(headers or {}) | ({MSG_ID_HEADER: msg_id} if msg_id is not None else {})
    if not all_headers:
        return len(payload)
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in all_headers.items()) + b"\r\n"
    return len(block) + len(payload)


class MessageTooLarge(ValueError):
    """A message NATS would not take: its payload and headers (``message_size``) exceed the server's
    ``max_payload``. Raised by :meth:`Bus.publish` before sending, for the caller to shrink or split it."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"a message of {size} bytes (payload and headers) exceeds NATS's max_payload of {limit}"
        )
        self.size = size
        self.limit = limit


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` matches the literal ``subject``: tokens split on ``.``, ``*`` stands for
    exactly one token, a final ``>`` for one or more."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(tokens) == len(wanted)


def _client_options(
    url: str,
    name: str | None,
    connect_timeout: float,
    reconnect_wait: float,
    drain_timeout: float,
    *,
    max_reconnect_attempts: int,
) -> dict[str, Any]:
    """nats-py's connect options for every bus: logged disconnections, reconnections and errors (the URL
    redacted), a bounded drain, reconnection allowed."""
    shown = redact_url(url)  # the URL may carry a token

    async def on_disconnect() -> None:
        log.warning("nats disconnected", extra={"nats_url": shown})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"nats_url": shown})

    # Visible (a wrong URL must not look like silence), but at most one line per 30 s while an outage makes
    # every reconnect attempt fail.
    errors = OncePer(WARN_EVERY_SECONDS)

    async def on_error(exc: Exception) -> None:
        if errors.due():
            log.warning("nats error: %s", exc, extra={"nats_url": shown})

    return {
        "name": name,
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": reconnect_wait,
        "max_reconnect_attempts": max_reconnect_attempts,
        # Shutdown must stay within the server's grace period even when NATS goes away mid-drain
        # (the library's default waits 30 s); unacknowledged messages are redelivered, not lost.
        "drain_timeout": drain_timeout,
        "allow_reconnect": True,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "error_cb": on_error,
    }


NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def check_nats_url(url: str) -> str:
    """Raise what nats-py raises (``nats.errors.Error``) for a URL it cannot parse, and the same for one of another
    scheme, at once: a start must fail on one, not retry it. nats-py reads a URL of any other scheme as
    ``nats://`` plus the whole URL, so ``http://nats:4222`` (or a database URL) became host ``http``
    (``postgresql+psycopg``) port 4222, and the service served without NATS for ever. (nats-py parses in its
    connect; its own parser is the only one that agrees with it.)"""
    scheme, separator, _ = url.partition("://")
    if separator and scheme.lower() not in NATS_SCHEMES:
        raise NatsError(f"nats: a URL is nats://, tls://, ws:// or wss:// (or host:port), not {scheme}://")
    Client()._setup_server_pool([url])
    return url


class Bus:
    """A NATS client and its JetStream context: connected (:meth:`connect`), or connecting in the background
    (:meth:`start`), in which case :attr:`client` and :attr:`jetstream` raise ``NoServersError`` until the
    first connection, as every other way to reach NATS through this bus does."""

    def __init__(self, client: Client | None, *, publish_timeout: float = 5.0) -> None:
        self._client = client
        self._jetstream = client.jetstream(timeout=publish_timeout) if client is not None else None
        self._publish_timeout = publish_timeout
        self._declared: dict[str, StreamSpec] = {}  # by name: the spec ensure_stream was last given
        # Set once connected and every stream declared so far is declared at NATS (at once after ``connect``).
        self._ready = asyncio.Event()
        self._starting: asyncio.Task[None] | None = None  # ``start``'s background connection, until done

    @property
    def client(self) -> Client:
        """The connected nats-py client; ``NoServersError`` (the kit answers UNAVAILABLE) before the first
        connection of a bus that :meth:`start` connects in the background."""
        if self._client is None:
            raise NoServersError
        return self._client

    @property
    def jetstream(self) -> JetStreamContext:
        """The client's JetStream context; ``NoServersError`` before the first connection, as :attr:`client`."""
        if self._jetstream is None:
            raise NoServersError
        return self._jetstream

    @property
    def max_payload(self) -> int | None:
        """The largest message the server takes (payload and headers, ``message_size``), from its INFO; None
        before the first connection, when it is not known (nats-py would say 1 MiB whatever the server's is)."""
        return self._client.max_payload if self._client is not None else None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str | None = None,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 1.0,
        publish_timeout: float = 5.0,
        drain_timeout: float = 2.0,
        initial_attempts: int = 3,
    ) -> Bus:
        """Connect to ``url`` now (raises when unreachable after ``initial_attempts``) and keep reconnecting
        forever after. For tools and tests; a service starts its bus with :meth:`start`."""
        client = await nats.connect(
            url,
            **_client_options(
                url,
                name,
                connect_timeout,
                reconnect_wait,
                drain_timeout,
                max_reconnect_attempts=initial_attempts,
            ),
        )
        # nats-py reads this option on every reconnect: from now on, an outage only delays.
        client.options["max_reconnect_attempts"] = -1
        bus = cls(client, publish_timeout=publish_timeout)
        bus._ready.set()
        return bus

    @classmethod
    async def start(
        cls,
        url: str,
        streams: Sequence[StreamSpec] = (),
        *,
        wait_seconds: float,
        name: str | None = None,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 1.0,
        publish_timeout: float = 5.0,
        drain_timeout: float = 2.0,
    ) -> Bus:
        """Connect to ``url`` and declare ``streams``, waiting at most ``wait_seconds`` for both; then go on
        connecting in the background, forever, while the service starts and serves.

        Why not fail the start: a service's calls do without NATS (events wait in outboxes, consumers pause), so
        a pod restarted or scaled out during a NATS outage serves like the pods already running, instead of
        crash-looping until NATS is back. Until connected, everything that would reach NATS through this bus
        raises ``NoServersError`` at once (the kit answers it UNAVAILABLE; relays and consumers retry later),
        and health's ``parapet.dependencies`` is NOT_SERVING. A URL that cannot be parsed still fails the start;
        an unreachable one is logged (at most every 30 s), as an outage is.

        The connection is made on a client of its own, handed to the bus only once connected: nats-py's first
        connection closes its client after each failed handshake (a port that accepts and drops, a proxy, a TLS
        or authorization error), and a request made on it meanwhile left it waiting for replies for good."""
        check_nats_url(url)
        options = _client_options(
            url, name, connect_timeout, reconnect_wait, drain_timeout, max_reconnect_attempts=-1
        )
        bus = cls(None, publish_timeout=publish_timeout)
        bus._declared.update((spec.name, spec) for spec in streams)
        starting = asyncio.create_task(
            bus._connect_and_declare(url, options, reconnect_wait), name="nats-start"
        )
        bus._starting = starting
        try:
            await asyncio.wait([starting], timeout=wait_seconds)
            if starting.done():
                starting.result()
        except BaseException:  # the start itself cancelled (SIGTERM while waiting)
            await bus.close()
            raise
        if not starting.done():
            log.warning(
                "starting without NATS: not connected within %.1f s; connecting in the background",
                wait_seconds,
                extra={"nats_url": redact_url(url)},
            )
        return bus

    async def _connect_and_declare(self, url: str, options: dict[str, Any], retry_wait: float) -> None:
        """``start``'s background work: connect a client of its own (nats-py retries for ever at
        ``max_reconnect_attempts=-1``; anything else it lets escape is retried here), hand it to the bus, then
        declare every stream declared so far, retrying until NATS takes them all."""
        shown = redact_url(url)
        while self._client is None:
            client = Client()
            try:
                await client.connect(url, **options)
            except Exception:
                log.warning("connecting to NATS failed; retrying", exc_info=True, extra={"nats_url": shown})
                with contextlib.suppress(Exception):
                    await within(CLOSE_STEP_SECONDS, client.close())
                await asyncio.sleep(retry_wait)
                continue
            except BaseException:
                with contextlib.suppress(Exception):
                    await within(CLOSE_STEP_SECONDS, client.close())
                raise
            self._client, self._jetstream = client, client.jetstream(timeout=self._publish_timeout)
        log.info("nats connected", extra={"nats_url": shown})
        declared: set[str] = set()
        failures = OncePer(WARN_EVERY_SECONDS)
        while pending := [spec for spec in self._declared.values() if spec.name not in declared]:
            try:
                for spec in pending:
                    await self.ensure_stream(spec)
                    declared.add(spec.name)
            except Exception:
                # JetStream not ready yet (a NATS that has just started, a cluster without a leader) or not
                # enabled at all: visible, once per 30 s.
                if failures.due():
                    log.warning("declaring the streams at NATS failed; retrying", exc_info=True)
                await asyncio.sleep(retry_wait)
        self._ready.set()  # no await since the last check: a ``declare`` now sees it set and declares itself
        self._starting = None

    @property
    def ready(self) -> bool:
        """Connected once, and the streams declared so far declared at NATS."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Until :attr:`ready`."""
        await self._ready.wait()

    async def declare(self, spec: StreamSpec) -> None:
        """Declare ``spec`` at NATS now when the bus is ready (``ensure_stream``); otherwise only remember it: the
        bus declares it once connected. Either way a service's start goes on: a declaration NATS does not take
        now (it went away again) is made by the first publish no stream takes (``restore_stream``) or the first
        consumer's fetch (``parapet.kit.durable``)."""
        self._declared[spec.name] = spec
        if not self.ready:
            return
        try:
            await self.ensure_stream(spec)
        except Exception:
            log.warning("declaring stream %s failed; declared again when used", spec.name, exc_info=True)

    async def ensure_stream(self, spec: StreamSpec) -> StreamConfig:
        """Create the stream from ``spec``; when it exists, update only what the code owns (idempotent).
        Returns the stream's configuration as it now is.

        The code owns what correctness depends on: the subjects it publishes to, the duplicate window
        that makes publishing exactly-once, the description. Limits and placement (max age, max bytes,
        replicas) are the spec's defaults for a new stream and the operator's afterwards: a restart must
        not undo an operator's tuning (``nats stream edit``). Retention and storage cannot change on an
        existing stream; a difference is logged. The spec is remembered: ``restore_stream`` declares it again.
        """
        self._declared[spec.name] = spec
        try:
            info = await self.jetstream.stream_info(spec.name)
        except NotFoundError:
            created = await self.jetstream.add_stream(spec.to_config())
            log.info("stream created", extra={"stream": spec.name})
            return created.config
        current = info.config
        wanted = dataclasses.replace(
            current,
            subjects=list(spec.subjects),
            duplicate_window=spec.duplicate_window_seconds,
            description=spec.description,
        )
        if current.retention != RetentionPolicy(spec.retention) or current.storage != StorageType(
            spec.storage
        ):
            log.warning(
                "stream %s exists with another retention or storage than declared; keeping it",
                spec.name,
                extra={"stream": spec.name},
            )
        if wanted != current:
            await self.jetstream.update_stream(wanted)
            log.info("stream updated", extra={"stream": spec.name})
        return wanted

    def declared_stream(self, subject: str) -> StreamSpec | None:
        """The stream this bus declared whose subjects cover ``subject``, if any."""
        for spec in self._declared.values():
            if any(subject_matches(pattern, subject) for pattern in spec.subjects):
                return spec
        return None

    async def restore_stream(self, subject: str) -> bool:
        """After a publish to ``subject`` that no stream took (NATS came back without its store, or an operator
        removed the stream): declare the stream this bus declared for it again. False when it declared none
        (raises when declaring fails). A relay publishing on its own (``jetstream.publish_async``) calls this."""
        spec = self.declared_stream(subject)
        if spec is None:
            return False
        await self.ensure_stream(spec)
        log.warning(
            "no stream took a message on %s; stream %s declared again",
            subject,
            spec.name,
            extra={"stream": spec.name, "subject": subject},
        )
        return True

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        ack_timeout: float | None = None,
    ) -> PubAck:
        """Publish to JetStream and wait for the server's ack (the message is stored when this returns).

        ``msg_id`` becomes ``Nats-Msg-Id``: the stream drops a republish of the same id within its
        duplicate window, which makes at-least-once relays exactly-once.

        When no stream takes the message and this bus declared one covering ``subject``, that stream is declared
        again (``restore_stream``) and the publish retried once; otherwise ``NoStreamResponseError`` is raised.

        A message over the server's limit raises :class:`MessageTooLarge` without being sent: nats-py checks the
        payload alone, and a message its headers take over the limit made the server close the connection, every
        other publish and subscription of the service with it.
        """
        all_headers: dict[str, Any] = dict(headers or {})
        if msg_id is not None:
            all_headers[MSG_ID_HEADER] = msg_id
        size, limit = message_size(payload, all_headers), self.client.max_payload
        if size > limit:
            raise MessageTooLarge(size, limit)
        timeout = ack_timeout or self._publish_timeout
        try:
            return await self.jetstream.publish(
                subject, payload, timeout=timeout, headers=all_headers or None
            )
        except NoStreamResponseError:
            try:
                restored = await self.restore_stream(subject)
            except Exception:
                # A JetStream still recovering may refuse the declaration too: the publish fails as it would
                # have (no stream), which callers treat as NATS being unavailable.
                log.warning("declaring the stream of %s again failed", subject, exc_info=True)
                restored = False
            if not restored:
                raise
        ack: PubAck = await self.jetstream.publish(
            subject, payload, timeout=timeout, headers=all_headers or None
        )
        return ack

    async def is_healthy(self, flush_timeout: int = 1) -> bool:
        """Connected, and the server answers a round trip (PING/PONG) within ``flush_timeout`` seconds."""
        client = self._client
        if client is None or not client.is_connected:
            return False
        await client.flush(timeout=flush_timeout)
        return True

    async def close(self) -> None:
        """Drain: deliver what is buffered and let subscriptions finish, then close; each step bounded by
        ``CLOSE_STEP_SECONDS``, so a shutdown always completes."""
        timeout = CLOSE_STEP_SECONDS
        if self._starting is not None:
            await cancel_and_wait(self._starting)  # still connecting (its own client closed) or declaring
            self._starting = None
        client = self._client
        if client is None or client.is_closed:
            return
        if not client.is_connected:
            # NATS is down: there is nothing to drain, and draining would wait its bound.
            with contextlib.suppress(Exception):
                await within(timeout, client.close())
            return
        try:
            await within(timeout, client.drain())
            return
        except Exception:
            # Draining needs a live connection; when NATS is down or stuck at shutdown, close is all we can do.
            log.warning("nats drain failed; closing", exc_info=True)
        try:
            # The client's own close can wait forever on a connection that died mid-drain (seen in tests and
            # after a launcher was killed): bounded, and whatever it raises is only logged.
            await within(timeout, client.close())
        except Exception:
            log.warning("nats close failed", exc_info=True)
