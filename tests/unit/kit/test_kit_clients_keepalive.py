"""A peer whose host vanished without closing its connections (a node failure, a partition) is noticed by the
kit's channels within keepalive plus its timeout, and calls go to a healthy replica; idle channels ping the
kit's servers without being told to calm down; a peer back after an outage is reached again within the
reconnect backoff bound.

The vanished host is a proxy between the channel and real servers that stops forwarding in both directions
and closes nothing (a dead host sends no FIN or RST): the channel's own kernel still acknowledges every
byte, so only gRPC's HTTP/2 pings can tell. Measured before the kit set keepalive: calls failed until the
end of the test (DEADLINE_EXCEEDED), and with only keepalive time and timeout set, for 60 s
(``parapet.kit.clients.keepalive_options`` says why). The tests use short values, on both sides; the
settings' defaults are the production ones.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from parapet.kit import clients, timeouts
from parapet.kit.config import ServiceSettings
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    fast_settings,
    generic_app,
    running,
    stream_caller,
    string_service,
    unary_caller,
)

SERVICE = "test.v1.Replica"
#: gRPC sends a client's pings about a second apart at the most, whatever its keepalive.
KEEPALIVE_SECONDS = 1.0
KEEPALIVE_TIMEOUT_SECONDS = 0.5
#: Scheduling slack on a busy two-core machine, on top of what keepalive needs to notice (1.5 s was exceeded once
#: in CI, with other suites running; without the fix the same waits last 60 s, or for ever).
SLACK_SECONDS = 5.0

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PING, _GOAWAY, _ACK = 0x6, 0x7, 0x1


class _Frames:
    """The HTTP/2 frames of one direction of a plaintext connection, counted as they pass."""

    def __init__(self, *, client_side: bool) -> None:
        self._buffer = bytearray()
        self._preface_left = len(_PREFACE) if client_side else 0
        self.pings = 0
        self.goaway_codes: list[int] = []

    def feed(self, data: bytes) -> None:
        self._buffer += data
        skipped = min(self._preface_left, len(self._buffer))
        del self._buffer[:skipped]
        self._preface_left -= skipped
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            payload = bytes(self._buffer[9 : 9 + length])
            del self._buffer[: 9 + length]
            if kind == _PING and not flags & _ACK:
                self.pings += 1
            elif kind == _GOAWAY:
                self.goaway_codes.append(int.from_bytes(payload[4:8], "big"))


class BlackHoleProxy:
    """A TCP proxy on 127.0.0.1 that forwards each new connection to ``upstream``, until ``black_hole``."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.connections = 0
        self.refusing = False  # a peer that is down: connections are closed as soon as they open
        self.refused = 0
        self._frames: list[tuple[_Frames, _Frames]] = []
        self._holes: list[asyncio.Event] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> BlackHoleProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Closing every socket ends the relays (their reads see the end); cancelled instead, asyncio's
        # stream server would log the cancellation as an error.
        for writer in self._writers:
            writer.close()
        await timeouts.within(5.0, asyncio.gather(*self._tasks, return_exceptions=True))

    def black_hole(self, *, then_to: int) -> None:
        """The connections open so far carry nothing more, either way, and stay open; new connections go to
        ``then_to`` (the healthy replica a Service's address now leads to)."""
        for hole in self._holes:
            hole.set()
        self.upstream = then_to

    def cut(self) -> None:
        """Closes every connection open so far (a peer that went down and closed its sockets)."""
        for writer in self._writers:
            writer.close()

    @property
    def pings_to_server(self) -> int:
        return sum(up.pings for up, _ in self._frames)

    @property
    def goaway_codes(self) -> list[int]:
        return [code for _, down in self._frames for code in down.goaway_codes]

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            client_writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self._writers.append(client_writer)
        hole = asyncio.Event()
        self._holes.append(hole)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            self._writers.append(server_writer)
            up, down = _Frames(client_side=True), _Frames(client_side=False)
            self._frames.append((up, down))
            await asyncio.gather(
                self._pump(client_reader, server_writer, hole, up),
                self._pump(server_reader, client_writer, hole, down),
            )
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hole: asyncio.Event, frames: _Frames
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if hole.is_set():
                    return  # swallowed; the sockets stay open until the test ends
                if not data:
                    writer.close()  # a real close is passed on
                    return
                frames.feed(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            writer.close()


async def _hang(request: StringValue, context: grpc.aio.ServicerContext) -> AsyncIterator[StringValue]:
    yield StringValue(value="first")
    await asyncio.Event().wait()  # a watch that has nothing more to say for now


def replica(name: str, keys: TestKeys) -> Any:
    async def who(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        return StringValue(value=name)

    handler = string_service(SERVICE, unary={"Who": who}, server_streaming={"Watch": _hang})
    return generic_app(handler, keys=keys, service_names=(SERVICE,))


def short_keepalive() -> ServiceSettings:
    return fast_settings(
        grpc_keepalive_seconds=KEEPALIVE_SECONDS,
        grpc_keepalive_timeout_seconds=KEEPALIVE_TIMEOUT_SECONDS,
        grpc_server_keepalive_timeout_seconds=KEEPALIVE_TIMEOUT_SECONDS,
    )


async def _first_answer(who: Any, keys: TestKeys, give_up: float) -> tuple[str | None, list[str]]:
    """Calls every 50 ms (each with a 0.5 s deadline) until one is answered: its answer, and the failures."""
    failures: list[str] = []
    until = time.monotonic() + give_up
    while time.monotonic() < until:
        try:
            return (await who(StringValue(), metadata=keys.metadata(), timeout=0.5)).value, failures
        except grpc.aio.AioRpcError as error:
            assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), error
            failures.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(0.05)
    return None, failures


@pytest.mark.parametrize("idle_seconds", [0.0, 2.5], ids=["right-after-a-call", "after-idling"])
async def test_calls_go_to_a_healthy_replica_soon_after_the_peer_vanishes(
    keys: TestKeys, idle_seconds: float
) -> None:
    """Right after a call (a BDP ping of gRPC's is then in flight, which a keepalive ping waits on) and after
    idling (nothing in flight: only a keepalive ping can find out)."""
    settings = short_keepalive()
    async with (
        running(replica("a", keys), settings) as (_, port_a),
        running(replica("b", keys), settings) as (_, port_b),
        BlackHoleProxy(port_a) as proxy,
    ):
        channel = clients.channel(f"127.0.0.1:{proxy.port}", settings, retryable_methods=())
        who = unary_caller(channel, f"/{SERVICE}/Who")
        try:
            assert (await who(StringValue(), metadata=keys.metadata(), timeout=5)).value == "a"
            await asyncio.sleep(idle_seconds)
            proxy.black_hole(then_to=port_b)
            vanished = time.monotonic()
            answer, failures = await _first_answer(who, keys, give_up=10.0)
            took = time.monotonic() - vanished
        finally:
            await channel.close()
    assert answer == "b", f"no answer {took:.1f} s after the peer vanished: {failures}"
    assert took < KEEPALIVE_SECONDS + KEEPALIVE_TIMEOUT_SECONDS + SLACK_SECONDS, (took, failures)
    assert proxy.connections == 2


async def test_a_stream_from_a_vanished_peer_fails_instead_of_hanging(keys: TestKeys) -> None:
    """A watch without a deadline (``default_timeout=None``) on a dead connection ends UNAVAILABLE, so its
    consumer subscribes again, instead of waiting for ever."""
    settings = short_keepalive()
    async with running(replica("a", keys), settings) as (_, port), BlackHoleProxy(port) as proxy:
        channel = clients.channel(f"127.0.0.1:{proxy.port}", settings, default_timeout=None)
        try:
            stream = stream_caller(channel, f"/{SERVICE}/Watch")(StringValue(), metadata=keys.metadata())
            assert (await stream.read()).value == "first"
            proxy.black_hole(then_to=port)
            bound = KEEPALIVE_SECONDS + KEEPALIVE_TIMEOUT_SECONDS + SLACK_SECONDS
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await timeouts.within(bound, stream.read())
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close()


async def test_an_idle_channel_keeps_pinging_our_server_without_being_told_to_calm_down(
    keys: TestKeys,
) -> None:
    """A gRPC server by default allows one ping per 5 minutes (2 hours without calls) and answers the third
    early one with GOAWAY ENHANCE_YOUR_CALM, which closes the connection and fails the calls on it. The kit's
    servers accept the kit's channels' pings; counted on the wire."""
    settings = fast_settings(grpc_keepalive_seconds=0.2, grpc_keepalive_timeout_seconds=1.0)
    async with running(replica("a", keys), settings) as (_, port), BlackHoleProxy(port) as proxy:
        channel = clients.channel(f"127.0.0.1:{proxy.port}", settings)
        who = unary_caller(channel, f"/{SERVICE}/Who")
        try:
            await who(StringValue(), metadata=keys.metadata(), timeout=5)
            await asyncio.sleep(4.0)  # no call
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            assert (await who(StringValue(), metadata=keys.metadata(), timeout=5)).value == "a"
        finally:
            await channel.close()
    assert proxy.pings_to_server >= 4  # idle connections keep pinging (by default gRPC stops after two)
    assert proxy.goaway_codes == []
    assert proxy.connections == 1


async def test_a_peer_back_after_an_outage_is_found_again_within_the_reconnect_backoff_bound(
    keys: TestKeys,
) -> None:
    """gRPC waits longer and longer between attempts to reach a peer that is down (1 s, 1.6 s, 2.6 s... up
    to 120 s by default), failing calls meanwhile: a peer down for a few minutes was found again up to two
    minutes after it was back. The kit bounds the pause (``grpc_reconnect_backoff_max_seconds``)."""
    settings = fast_settings(grpc_reconnect_backoff_max_seconds=0.5)
    async with running(replica("a", keys), settings) as (_, port), BlackHoleProxy(port) as proxy:
        channel = clients.channel(f"127.0.0.1:{proxy.port}", settings, retryable_methods=())
        who = unary_caller(channel, f"/{SERVICE}/Who")
        try:
            await who(StringValue(), metadata=keys.metadata(), timeout=5)
            proxy.refusing = True
            proxy.cut()
            await asyncio.sleep(4.0)
            attempts = proxy.refused
            proxy.refusing = False
            back = time.monotonic()
            answer, failures = await _first_answer(who, keys, give_up=10.0)
            took = time.monotonic() - back
        finally:
            await channel.close()
    # gRPC's own schedule tries about 4 times in 4 s (at 0, 1, 2.6 s and maybe 4.2 s).
    assert attempts >= 6, attempts
    assert answer == "a", failures
    assert took < 0.5 * 1.2 + SLACK_SECONDS, took  # the bound, its 20 % jitter, and the slack


def _tcp_user_timeouts(peer_port: int, *, accepted: bool = False) -> list[int]:
    """TCP_USER_TIMEOUT (ms) of this process's sockets connected to ``peer_port`` (``accepted``: the server's
    sockets accepted on that port): grpc sets it from the keepalive timeout."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue  # not a socket
        try:
            end = sock.getsockname() if accepted else sock.getpeername()
            connected = not accepted or isinstance(sock.getpeername(), tuple)
            if (
                sock.type == socket.SOCK_STREAM
                and isinstance(end, tuple)
                and end[1] == peer_port
                and connected
            ):
                found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        except OSError:
            pass  # not connected
        finally:
            sock.close()
    return found


async def test_channels_keep_the_production_keepalive_unless_the_caller_sets_its_own(keys: TestKeys) -> None:
    """Every kit channel, with settings or without, gets the settings' defaults; a caller's own channel
    arguments take precedence (gRPC keeps the first of a repeated argument)."""
    defaults = ServiceSettings.model_fields
    assert defaults["grpc_keepalive_seconds"].default == 10.0
    assert defaults["grpc_keepalive_timeout_seconds"].default == 5.0
    async with running(replica("a", keys), fast_settings()) as (_, port):
        for settings, options, expected in (
            (fast_settings(), (), 5_000),
            (None, (), 5_000),
            (None, (("grpc.keepalive_timeout_ms", 3_000),), 3_000),
        ):
            async with clients.channel(f"127.0.0.1:{port}", settings, options=options) as channel:
                await unary_caller(channel, f"/{SERVICE}/Who")(StringValue(), metadata=keys.metadata())
                assert _tcp_user_timeouts(port) == [expected], (settings, options)


async def test_servers_give_their_callers_longer_than_the_channels_give_peers(keys: TestKeys) -> None:
    """The server's keepalive timeout is also every accepted socket's TCP_USER_TIMEOUT. At the channels' 5 s,
    a caller outside the suite (the gateway's: a phone changing networks, a client whose event loop is busy)
    whose acknowledgements stalled for 5 s lost its connection and the chat on it; servers take 20 s."""
    assert ServiceSettings.model_fields["grpc_server_keepalive_timeout_seconds"].default == 20.0
    async with (
        running(replica("a", keys), fast_settings()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        await unary_caller(channel, f"/{SERVICE}/Who")(StringValue(), metadata=keys.metadata())
        assert _tcp_user_timeouts(port, accepted=True) == [20_000]


async def test_a_server_stops_streaming_to_a_client_that_vanished(keys: TestKeys) -> None:
    """A stream's handler whose client vanished (no deadline, nothing closed) is cancelled once the server's
    own pings go unanswered, instead of waiting for ever with what it holds (a watch with nothing new to say; a
    stream blocked on flow control ends the same way, once the buffers on the way are full, which on this proxy
    took longer than the bound: its kernel takes the bytes). The handler sends nothing after its first message,
    so the server's ping is on the wire at once."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(request: StringValue, context: grpc.aio.ServicerContext) -> AsyncIterator[StringValue]:
        started.set()
        try:
            yield StringValue(value="first")
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    handler = string_service(SERVICE, server_streaming={"Endless": endless})
    app = generic_app(handler, keys=keys, service_names=(SERVICE,))
    async with running(app, short_keepalive()) as (_, port), BlackHoleProxy(port) as proxy:
        # A client of its own, without keepalive: an external caller's, say.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            stream = stream_caller(channel, f"/{SERVICE}/Endless")(StringValue(), metadata=keys.metadata())
            await stream.read()
            await started.wait()
            proxy.black_hole(then_to=port)
            bound = KEEPALIVE_SECONDS + KEEPALIVE_TIMEOUT_SECONDS + SLACK_SECONDS
            await timeouts.within(bound, cancelled.wait())
            stream.cancel()
