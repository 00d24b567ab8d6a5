"""A TCP proxy between Kafka clients and the broker that stalls, resets and holds requests.

The broker advertises the proxy's address (`EmbeddedBroker(advertised_port=...)`), so every
connection a client opens, the bootstrap one and the ones from metadata, passes through here.
Client-to-broker bytes are cut into Kafka request frames (a 4-byte size, then api_key,
api_version, correlation_id and client_id), so a fault can pick requests by API key and
connections by the client id in their request header: the worker under test (client id
`session-metrics`) can lose its network while the test's own producer keeps streaming.
"""

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PRODUCE = 0
OFFSET_COMMIT = 8
WORKER_CLIENT_ID = "session-metrics"

Match = Callable[["Connection"], bool]


def everyone(_: "Connection") -> bool:
    return True


def client(client_id: str) -> Match:
    """Match the connections of one Kafka client id."""

    def match(conn: "Connection") -> bool:
        return conn.client_id == client_id

    return match


@dataclass(eq=False)
class Connection:
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    broker_reader: asyncio.StreamReader
    broker_writer: asyncio.StreamWriter
    client_id: str | None = None
    """From the first request header; the broker never speaks first, so it is known in time."""
    held: int = 0
    """Requests of this connection that waited at a hold."""

    def abort(self) -> None:
        """Close both sides with a TCP reset (SO_LINGER 0), as a dropped NAT entry would."""
        for writer in (self.client_writer, self.broker_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


@dataclass
class Faults:
    """What the proxy does to traffic now; every change wakes the waiting pumps."""

    stalled: Match | None = None
    """Matching connections forward nothing, either way, until resumed."""
    hold_keys: frozenset[int] = frozenset()
    hold_match: Match = everyone
    """Requests with these API keys on matching connections wait until released."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def blocks(self, conn: Connection, api_key: int | None) -> bool:
        if self.stalled is not None and self.stalled(conn):
            return True
        return api_key in self.hold_keys and self.hold_match(conn)

    def touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class TcpProxy:
    """Listens on 127.0.0.1:`port` (a free one by default) and forwards to `target_port`."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self.faults = Faults()
        self.connections: set[Connection] = set()
        self.accepted = 0
        self.resets = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # --- faults ----------------------------------------------------------------

    def stall(self, match: Match = everyone) -> None:
        """Stop forwarding on matching connections, open and future: a black hole."""
        self.faults.stalled = match
        self.faults.touch()

    def resume(self) -> None:
        self.faults.stalled = None
        self.faults.touch()

    def hold(self, api_keys: set[int], match: Match = everyone) -> None:
        """Requests with these API keys wait (and the connection behind them) until release()."""
        self.faults.hold_keys, self.faults.hold_match = frozenset(api_keys), match
        self.faults.touch()

    def release(self) -> None:
        self.faults.hold_keys = frozenset()
        self.faults.touch()

    def reset(self, match: Match = everyone) -> int:
        """Reset every matching connection now; returns how many."""
        hit = [c for c in self.connections if match(c)]
        for conn in hit:
            conn.abort()
        self.resets += len(hit)
        return len(hit)

    def held(self, match: Match = everyone) -> int:
        """Requests that waited at a hold so far, on matching connections still open."""
        return sum(c.held for c in self.connections if match(c))

    # --- forwarding ------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(handler)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()  # broker down: the client sees a refused-like reset
            return
        self.accepted += 1
        conn = Connection(reader, writer, broker_reader, broker_writer)
        self.connections.add(conn)
        pumps = [
            asyncio.create_task(self._requests(conn)),
            asyncio.create_task(self._responses(conn)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            conn.abort()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self.connections.discard(conn)

    async def _gate(self, conn: Connection, api_key: int | None) -> None:
        counted = False
        while self.faults.blocks(conn, api_key):
            if api_key is not None and not counted:
                conn.held, counted = conn.held + 1, True
            await self.faults.changed.wait()

    async def _requests(self, conn: Connection) -> None:
        """Client to broker, one whole request frame at a time."""
        buffer = bytearray()
        while chunk := await conn.client_reader.read(65536):
            buffer += chunk
            while len(buffer) >= 4:
                end = 4 + int.from_bytes(buffer[:4], "big")
                if len(buffer) < end:
                    break
                frame = bytes(buffer[:end])
                del buffer[:end]
                api_key = _header(conn, frame)
                await self._gate(conn, api_key)
                conn.broker_writer.write(frame)
                await conn.broker_writer.drain()

    async def _responses(self, conn: Connection) -> None:
        """Broker to client, chunk by chunk."""
        while chunk := await conn.broker_reader.read(65536):
            await self._gate(conn, None)
            conn.client_writer.write(chunk)
            await conn.client_writer.drain()


def _header(conn: Connection, frame: bytes) -> int | None:
    """The request's API key; records the connection's client id from its first request."""
    if len(frame) < 14:
        return None
    api_key, _version, _correlation, id_length = struct.unpack(">hhih", frame[4:14])
    if conn.client_id is None and 0 <= id_length <= len(frame) - 14:
        conn.client_id = frame[14 : 14 + id_length].decode("utf-8", "replace")
    return int(api_key)
