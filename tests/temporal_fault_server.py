"""A Temporal frontend on loopback that answers gRPC errors: what a busy or broken Temporal says.

A real gRPC server (HTTP/2 cleartext, the `h2` package; grpcio is not installed): it answers the
connection check (`GetSystemInfo`) as a healthy server does, so a real `temporalio` Client
connects, and every other WorkflowService call with the gRPC status set in `status`
(`grpc-status` trailers-only answer, as Temporal's frontend sends an error). `calls` records the
methods asked, so a test can tell the API did reach Temporal.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from temporalio.api.workflowservice.v1 import GetSystemInfoResponse
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig, RPCStatusCode

_SYSTEM_INFO = "/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo"


@dataclass
class TemporalFaultServer:
    status: RPCStatusCode = RPCStatusCode.UNAVAILABLE
    message: str = "frontend 10.0.3.7:7233: shard 12 ownership lost"  # internals the API must not echo
    port: int = 0
    calls: list[str] = field(default_factory=list)
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    async def client(self) -> Client:
        """A real client of this server, retrying briefly: the SDK retries UNAVAILABLE, RESOURCE_EXHAUSTED
        and INTERNAL for up to 10 s before raising, which changes nothing but the tests' duration."""
        quick = RetryConfig(initial_interval_millis=1, max_interval_millis=1, max_elapsed_time_millis=1, max_retries=1)
        return await Client.connect(
            f"127.0.0.1:{self.port}", namespace="default", data_converter=pydantic_data_converter, retry_config=quick
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        self._open.add(writer)
        paths: dict[int, str] = {}
        try:
            while data := await reader.read(65535):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        paths[ev.stream_id] = dict((str(k), str(v)) for k, v in ev.headers)[":path"]
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        self._answer(conn, ev.stream_id, paths.pop(ev.stream_id))
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    def _answer(self, conn: h2.connection.H2Connection, stream_id: int, path: str) -> None:
        grpc = [(":status", "200"), ("content-type", "application/grpc")]
        if path == _SYSTEM_INFO:
            message = GetSystemInfoResponse().SerializeToString()
            conn.send_headers(stream_id, grpc)
            conn.send_data(stream_id, b"\x00" + struct.pack(">I", len(message)) + message)
            conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
            return
        self.calls.append(path.rsplit("/", 1)[-1])
        error = [("grpc-status", str(int(self.status))), ("grpc-message", self.message)]
        conn.send_headers(stream_id, grpc + error, end_stream=True)


@asynccontextmanager
async def temporal_fault_server(
    status: RPCStatusCode = RPCStatusCode.UNAVAILABLE,
) -> AsyncIterator[TemporalFaultServer]:
    state = TemporalFaultServer(status=status)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for writer in list(state._open):  # the client keeps its connection open: end it here
            writer.close()
        await asyncio.sleep(0)
