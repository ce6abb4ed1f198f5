"""A local sink provider for benchmarks: raw asyncio HTTP/1.1 on loopback, in its own process.

Answers every POST with 200 after an optional delay and counts them. `GET /count` answers the
count; `GET /stats?from=N` answers, for the requests after the first N, their number, the first
and last arrival times (wall clock, seconds), the most seen in any 1-second window and how many
carried each `Idempotency-Key` (what a fan-out's rate, limit and exactly-once checks read). Its
own process so the client under test does not share its CPU.

    python -m bench.sink PORT DELAY_MS
"""

from __future__ import annotations

import asyncio
import bisect
import json
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

COUNT = 0
# One entry per POST, in arrival order: appending a float and a header value is all the hot path
# adds; the statistics are computed when asked for.
ARRIVALS: list[float] = []
KEYS: list[bytes | None] = []
IDEMPOTENCY_KEY = b"idempotency-key:"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    global COUNT
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length, key = 0, None
            for line in head.split(b"\r\n"):
                name = line[:16].lower()
                if name.startswith(b"content-length:"):
                    length = int(line[15:].strip() or 0)
                elif name == IDEMPOTENCY_KEY:
                    key = line[16:].strip()
            if length:
                await reader.readexactly(length)
            if head.startswith(b"GET /count"):
                body = str(COUNT).encode()
            elif head.startswith(b"GET /stats"):
                body = json.dumps(stats(head)).encode()
            else:
                COUNT += 1
                ARRIVALS.append(time.time())
                KEYS.append(key)
                if delay:
                    await asyncio.sleep(delay)
                body = b'{"ok":true}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


def stats(head: bytes) -> dict[str, Any]:
    """The requests after the first `from` (query parameter; default 0); with `limit`, also the
    shortest time `limit + 1` of them arrived in (under 1 s: the limit was exceeded, by how much)."""
    target = head.split(b" ", 2)[1].decode()
    query = parse_qs(urlsplit(target).query)
    start, limit = int(query.get("from", ["0"])[0]), int(float(query.get("limit", ["0"])[0]))
    times, keys = ARRIVALS[start:], KEYS[start:]
    per_key = Counter(k for k in keys if k is not None)
    return {
        "count": len(times),
        "first": times[0] if times else None,
        "last": times[-1] if times else None,
        "max_in_1s": max_in_window(times, 1.0),
        "shortest_span_over_limit_s": shortest_span(times, limit + 1) if limit else None,
        "distinct_keys": len(per_key),
        "duplicate_requests": sum(n - 1 for n in per_key.values()),  # requests beyond each key's first
        "keys_seen_more_than_once": sum(1 for n in per_key.values() if n > 1),
        "without_key": sum(1 for k in keys if k is None),
    }


def max_in_window(times: list[float], width: float) -> int:
    """The most arrivals in any half-open window [t, t + width) (arrivals are in order)."""
    ordered = sorted(times)  # arrival order is append order; sorted guards clock steps
    return max((bisect.bisect_left(ordered, t + width) - i for i, t in enumerate(ordered)), default=0)


def shortest_span(times: list[float], k: int) -> float | None:
    """The shortest time any `k` arrivals came within (None: fewer than `k` arrivals)."""
    ordered = sorted(times)
    spans = [ordered[i + k - 1] - ordered[i] for i in range(len(ordered) - k + 1)]
    return min(spans) if spans else None


async def main(port: int, delay_ms: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay_ms / 1000), "127.0.0.1", port, backlog=1024)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
