"""Parse, hash and seal subscriber-list slices in helper processes, in parallel.

Per row, a sync spends ~4 us of Python on validating, hashing (SHA-256) and sealing
(AES-GCM): C calls, but each holds the GIL, so threads would not help and one process tops
out at one core. `SealPool` runs that work in a few helper processes and hands back each
slice's rows already framed for PostgreSQL's binary COPY, in submission order.

A helper is `python -m activities.seal_pool`: it imports only the row rules and the crypto
(~45 MB), reads the configured keys once from its stdin (never argv or the environment),
then answers requests. Messages are length-prefixed pickles over the helper's own pipes;
both ends are this code, run by us. A helper that dies fails the sync attempt; the retry
resumes from the offset committed in the database, as for any other crash.
"""

from __future__ import annotations

import pickle
import queue
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sealed:
    """A slice's outcome: lines consumed, rejected (line, reason), accepted count and COPY rows."""

    consumed: int
    rejections: list[tuple[int, str]] = field(default_factory=list)
    accepted: int = 0
    framed: bytes = b""  # PostgreSQL: the accepted rows in binary COPY format
    hashes: list[bytes] = field(default_factory=list)  # SQLite: the accepted rows as values (keys: cut hashes)
    sealed: list[bytes] = field(default_factory=list)


def seal_slice(box: Any, id_type: str, lines: list[bytes], first_line: int, budget: int, frame: bool) -> Sealed:
    """Parse, hash and seal one slice (`domain.subscribers.parse_lines` for the rules): in a helper,
    or in-process (small files, SQLite, and the rare re-parse of a slice with an exact budget)."""
    from domain.subscribers import parse_lines
    from store.set_copy import KEY_BYTES, seal_rows

    parsed = parse_lines(id_type, lines, first_line, budget, digest=not frame)  # COPY rows: hashed in bulk
    n = len(parsed.values)
    if not n:
        return Sealed(parsed.consumed, parsed.rejections)
    if frame:
        framed = seal_rows(box, parsed.values, parsed.hashes, parsed.digested)
        return Sealed(parsed.consumed, parsed.rejections, n, framed=framed)
    keys = [h[:KEY_BYTES] for h in parsed.hashes]
    return Sealed(parsed.consumed, parsed.rejections, n, hashes=keys, sealed=box.seal_many(parsed.values))


def _send(pipe: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(len(data).to_bytes(8, "big"))
    pipe.write(data)
    pipe.flush()


def _recv(pipe: IO[bytes]) -> Any:
    head = pipe.read(8)
    if len(head) < 8:
        raise EOFError("subscriber seal helper closed its pipe")
    size = int.from_bytes(head, "big")
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError("subscriber seal helper closed its pipe")
    return pickle.loads(data)


class SealPool:
    """`processes` helpers; `submit` returns a future per slice (one thread per helper talks to it)."""

    def __init__(self, keys: list[str], processes: int) -> None:
        self.helpers: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        self.procs: list[subprocess.Popen[bytes]] = []
        for _ in range(processes):
            proc = subprocess.Popen(
                [sys.executable, "-m", "activities.seal_pool"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert proc.stdin is not None
            _send(proc.stdin, keys)
            self.procs.append(proc)
            self.helpers.put(proc)
        self.threads = ThreadPoolExecutor(processes, thread_name_prefix="subscriber-seal")

    def submit(self, id_type: str, lines: list[bytes], first_line: int, budget: int) -> Future[Sealed]:
        return self.threads.submit(self._call, (id_type, b"\n".join(lines), len(lines), first_line, budget))

    def _call(self, request: tuple[Any, ...]) -> Sealed:
        proc = self.helpers.get()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            _send(proc.stdin, request)
            result: Sealed = _recv(proc.stdout)
            return result
        finally:
            self.helpers.put(proc)

    def close(self) -> None:
        self.threads.shutdown(wait=True, cancel_futures=True)
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()  # the helper exits at end of input
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> SealPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    """Helper main loop: keys first, then (id_type, joined lines, count, first line, budget) requests."""
    from security.crypto import SecretBox

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    box = SecretBox(_recv(stdin))
    while True:
        try:
            id_type, joined, count, first_line, budget = _recv(stdin)
        except EOFError:
            return
        lines = joined.split(b"\n") if count else []
        _send(stdout, seal_slice(box, id_type, lines, first_line, budget, frame=True))


if __name__ == "__main__":
    from activities.seal_pool import _serve as serve  # pickled results must name this module, not __main__

    serve()
