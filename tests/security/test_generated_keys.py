"""Processes starting together on a fresh data folder (the API and a worker) generate one secret
key and one admin key between them, never one each: what one encrypts, the other must read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 6
ROUNDS = 5


def test_processes_starting_together_share_one_generated_key(tmp_path: Path) -> None:
    # Each process imports everything, says so, then waits for the word, so all generate at once.
    code = "\n".join([
        "import sys", "from settings import Settings", "print('ready', flush=True)", "sys.stdin.readline()",
        "s = Settings(data_dir=sys.argv[1], secret_key='', admin_key='')",
        "print(s.secret_keys[0], s.effective_admin_key, flush=True)",
    ])  # fmt: skip
    for round_ in range(ROUNDS):
        folder = tmp_path / f"data-{round_}"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
            for _ in range(PROCESSES)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate(timeout=60)
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            outputs = {p.communicate(timeout=60)[0].strip() for p in procs}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        assert len(outputs) == 1, outputs
        (line,) = outputs
        assert line == f"{(folder / 'secret.key').read_text()} {(folder / 'admin.key').read_text()}"
        assert sorted(f.name for f in folder.iterdir()) == ["admin.key", "secret.key"]  # no drafts left
        assert oct((folder / "secret.key").stat().st_mode & 0o777) == "0o600"
