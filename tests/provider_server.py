"""A local provider server for tests: real HTTP on loopback, scriptable faults.

Raw asyncio HTTP/1.1 (not an ASGI app) so it can do what real vendors do to us: answer 429 with
Retry-After, 5xx, answer slowly (or trickle the answer a byte at a time), or drop the connection
mid-response. Every request is recorded (method, path, headers, body). With
`honour_idempotency=True` a repeated `Idempotency-Key` is acknowledged without being recorded as
a new delivery, like vendors that de-duplicate.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: str | dict[str, Any] | list[Any] = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    drop: bool = False  # close the connection without answering
    truncate: bool = False  # send headers and half the body, then close
    trickle: float = 0.0  # seconds between the body's bytes (a vendor dribbling its answer); 0: at once


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ProviderServer:
    def __init__(self, *, honour_idempotency: bool = False) -> None:
        self.honour_idempotency = honour_idempotency
        self.requests: list[Received] = []
        self.deliveries: list[Received] = []  # requests that count as delivered messages
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._default: dict[str, Reply] = {}
        self._handlers: dict[str, Callable[[Received], Reply]] = {}
        self._seen_keys: set[str] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0
        self.on_request: Callable[[Received], None] | None = None

    # -------------------------------------------------------------- control

    def start(self) -> ProviderServer:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            # Keep-alive connections from pooled clients still have handlers waiting: end them
            # here, not by garbage collection after the loop has stopped.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to `path` with these replies, in order."""
        with self._lock:
            self._scripts[path].extend(replies)

    def default(self, path: str, reply: Reply) -> None:
        with self._lock:
            self._default[path] = reply

    def handler(self, path: str, fn: Callable[[Received], Reply]) -> None:
        with self._lock:
            self._handlers[path] = fn

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.deliveries.clear()
            self._scripts.clear()
            self._default.clear()
            self._handlers.clear()
            self._seen_keys.clear()

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    # -------------------------------------------------------------- HTTP

    def _reply_for(self, req: Received) -> Reply:
        with self._lock:
            self.requests.append(req)
            script = self._scripts.get(req.path)
            if script:
                reply = script.popleft()
            elif req.path in self._handlers:
                reply = self._handlers[req.path](req)
            else:
                reply = self._default.get(req.path, Reply(200, {"ok": True}))
            if 200 <= reply.status < 300 and not reply.drop and not reply.truncate:
                key = req.headers.get("idempotency-key")
                if not (self.honour_idempotency and key and key in self._seen_keys):
                    self.deliveries.append(req)
                if key:
                    self._seen_keys.add(key)
        if self.on_request is not None:
            self.on_request(req)
        return reply

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                path, _, query = target.partition("?")
                reply = self._reply_for(Received(method, path, query, headers, body))
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.drop:
                    writer.close()
                    return
                payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                data = payload.encode()
                hdrs = {"content-type": "application/json", **{k.lower(): v for k, v in reply.headers.items()}}
                hdrs["content-length"] = str(len(data))
                out = f"HTTP/1.1 {reply.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
                if reply.truncate:
                    writer.write(out.encode() + data[: len(data) // 2])
                    await writer.drain()
                    writer.close()
                    return
                if reply.trickle:
                    writer.write(out.encode())
                    for i in range(len(data)):
                        await writer.drain()
                        await asyncio.sleep(reply.trickle)
                        writer.write(data[i : i + 1])
                else:
                    writer.write(out.encode() + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            # stop() cancels handlers still waiting (a slow reply). Ending normally instead of as
            # cancelled: Python 3.11's stream callback calls task.exception() on the handler's
            # task, which raises for a cancelled task and prints a traceback per handler.
            pass
        finally:
            writer.close()
