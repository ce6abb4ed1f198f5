"""The `rejoin` launcher: `rejoin dev` refuses held ports and a dying server, its Temporal server
dies with it, usage errors are one line, and the data folder it makes is the owner's only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(data_dir: Path, frontend: int, ui: int, api: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REJOIN_", "TEMPORAL_"))}
    return env | {
        "REJOIN_DATA_DIR": str(data_dir),
        "TEMPORAL_ADDRESS": f"localhost:{frontend}",
        "REJOIN_TEMPORAL_UI_URL": f"http://localhost:{ui}",
        "REJOIN_API_PORT": str(api),
    }


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    # Its own session: whatever it leaves behind (a Temporal server without the fix) can be killed.
    command = [sys.executable, "-c", "from runtime.cli import main; main()", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr) within `timeout`; exit code None if it was still running (then killed)."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


@pytest.fixture
def ports() -> dict[str, int]:
    return {"frontend": free_port(), "ui": free_port(), "api": free_port()}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket; the test binds it to the port it holds."""
    sock = socket.socket()
    yield sock
    sock.close()


@pytest.mark.parametrize("held", ["frontend", "ui"])
def test_dev_refuses_a_port_in_use_and_names_it(
    held: str, ports: dict[str, int], listener: socket.socket, tmp_path: Path
) -> None:
    listener.bind(("127.0.0.1", ports[held]))
    listener.listen()
    code, out, err = finish(start(environment(tmp_path / "data", **ports), "dev"), timeout=30)
    assert code not in (0, None), (code, out, err)
    assert f"port {ports[held]}" in err and "is in use" in err and "ss -ltnp" in err, err
    assert "Rejoin is running" not in out


@pytest.mark.parametrize("held", ["frontend", "api"])
def test_a_refused_dev_start_leaves_a_fresh_data_folder_untouched(
    held: str, ports: dict[str, int], listener: socket.socket, tmp_path: Path
) -> None:
    """No key files, no database: a first run refused for a held port made nothing to clean up."""
    data = tmp_path / "data"
    listener.bind(("127.0.0.1", ports[held]))
    listener.listen()
    code, out, err = finish(start(environment(data, **ports), "dev"), timeout=30)
    assert code not in (0, None) and "is in use" in err, (code, out, err)
    assert not data.exists() or sorted(p.name for p in data.iterdir()) == [], sorted(data.iterdir())


def _modes(data: Path, database: str) -> dict[str, int]:
    """The permission bits of a SQLite database file and its -wal/-shm companions (those present)."""
    return {p.name: p.stat().st_mode & 0o777 for p in data.iterdir() if p.name.startswith(database)}


def test_dev_fails_when_its_temporal_server_exits_during_start_up(ports: dict[str, int], tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "temporal.db").mkdir(parents=True)  # a database file the server cannot open: it exits at once
    code, out, err = finish(start(environment(data, **ports), "dev"), timeout=30)
    assert code not in (0, None), (code, out, err)
    assert "the Temporal dev server exited during start-up" in err, err
    assert "Rejoin is running" not in out


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_temporal_server_dies_with_a_killed_rejoin_dev(ports: dict[str, int], tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = start(environment(data, **ports), "dev")
    server: list[int] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:  # the banner comes once the server is serving
            if "Rejoin is running" in line or time.monotonic() > deadline:
                break
        server = [c for c in _children(proc.pid) if "temporal" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(server) == 1, server
        assert data.stat().st_mode & 0o777 == 0o700  # the data folder holding temporal.db and rejoin.db
        temporal = _modes(data, "temporal.db")  # the server's database (WAL): owner only, as Rejoin's
        assert "temporal.db" in temporal and set(temporal.values()) == {0o600}, temporal
        proc.kill()  # SIGKILL: no chance to stop its children itself
        proc.wait()
        deadline = time.monotonic() + 15
        while _alive(server[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server[0]), "the Temporal dev server outlived `rejoin dev`"
    finally:
        for pid in [proc.pid, *server]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()


def _held_request(port: int, deadline: float) -> socket.socket:
    """A connection to the API with a request in flight (its body half sent): the API's shutdown waits
    for it, so `rejoin dev` stays in its drain (API and worker) for as long as the test holds it."""
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.2)
    sock.sendall(b"POST /v2/collect/user/event HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{")  # fmt: skip
    return sock


@dataclass
class Serving:
    """A `rejoin dev` that is serving: its process, its Temporal server's pid, its stderr so far."""

    proc: subprocess.Popen[str]
    server: int
    logged: list[str]

    def wait_for_log(self, text: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not any(text in line for line in self.logged):
            assert time.monotonic() < deadline, self.logged
            time.sleep(0.05)

    def server_stops(self, within: float = 15) -> bool:
        deadline = time.monotonic() + within
        while _alive(self.server) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not _alive(self.server)


@contextlib.contextmanager
def serving_dev(ports: dict[str, int], tmp_path: Path) -> Iterator[Serving]:
    """`rejoin dev` started and serving (its banner printed); killed with its server at the end."""
    proc = start(environment(tmp_path / "data", **ports), "dev")
    server: list[int] = []
    logged: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    reader = threading.Thread(target=lambda: logged.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        for line in proc.stdout:  # the banner comes once the server is serving
            if "Rejoin is running" in line or time.monotonic() > deadline:
                break
        server = [c for c in _children(proc.pid) if "temporal" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(server) == 1, (server, logged)
        yield Serving(proc, server[0], logged)
    finally:
        for pid in [proc.pid, *server]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ctrl_c_stops_the_temporal_server_only_after_the_worker_drained(ports: dict[str, int], tmp_path: Path) -> None:
    """A terminal's Ctrl-C is SIGINT to the whole foreground process group: it must not reach the dev
    server, which stopped at once while the worker drained (its activity completions were lost, the
    activities ran again). `rejoin dev` stops it itself, after the drain; no port is left open."""
    from runtime.dev_server import port_in_use

    with serving_dev(ports, tmp_path) as dev:
        with _held_request(ports["api"], time.monotonic() + 30):
            os.killpg(dev.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            dev.wait_for_log("Beginning worker shutdown")
            until = time.monotonic() + 3  # unfixed, the server was gone about a second after the signal
            while time.monotonic() < until:
                assert _alive(dev.server), "the Temporal dev server stopped while the worker was draining"
                time.sleep(0.1)
            assert dev.proc.poll() is None, ("rejoin dev did not wait for the request in flight", dev.logged)
            assert port_in_use(ports["frontend"]), "the Temporal server stopped serving during the drain"
        code = dev.proc.wait(timeout=30)  # the request released: the drain ends, then the server
        assert code == 0, dev.logged
        assert dev.server_stops(), "rejoin dev left its Temporal server running"
        assert [port for port in ports.values() if port_in_use(port)] == [], ports


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_second_ctrl_c_quits_at_once_while_the_first_drains(ports: dict[str, int], tmp_path: Path) -> None:
    """The drain waits for running work (a slow vendor call, a request in flight) however long it
    takes; a second Ctrl-C was ignored. Now it quits at once and stops the server; no port is left."""
    from runtime.dev_server import port_in_use

    with serving_dev(ports, tmp_path) as dev:
        with _held_request(ports["api"], time.monotonic() + 30):  # the drain cannot end while it is held
            os.killpg(dev.proc.pid, signal.SIGINT)
            dev.wait_for_log("Ctrl-C again to quit at once")
            time.sleep(1)
            assert dev.proc.poll() is None, ("the drain should still wait for the held request", dev.logged)
            os.killpg(dev.proc.pid, signal.SIGINT)
            code = dev.proc.wait(timeout=10)  # unfixed: still draining, a TimeoutExpired
        assert code == 130, dev.logged
        assert dev.server_stops(), "the Temporal server outlived a forced quit"
        assert [port for port in ports.values() if port_in_use(port)] == [], ports


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ctrl_c_during_start_up_stops_rejoin_dev_and_its_server(ports: dict[str, int], tmp_path: Path) -> None:
    """The server (in its own session) does not get the Ctrl-C: `rejoin dev` must stop waiting for it
    to come up and stop it, not start the worker and API once it serves, nor report it as crashed."""
    from runtime.dev_server import port_in_use

    proc = start(environment(tmp_path / "data", **ports), "dev")
    server: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not server:
            assert time.monotonic() < deadline and proc.poll() is None, "no Temporal server started"
            with contextlib.suppress(OSError, ValueError):  # a thread or child exiting while listed
                server = [c for c in _children(proc.pid) if "temporal" in Path(f"/proc/{c}/cmdline").read_text()]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # long before it serves: its start takes seconds
        code, out, err = finish(proc, timeout=30)
        assert code == 0, (code, err)
        assert "Rejoin is running" not in out and "exited during start-up" not in err, (out, err)
        deadline = time.monotonic() + 15
        while _alive(server[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server[0]), "rejoin dev left its Temporal server running"
        assert [port for port in ports.values() if port_in_use(port)] == [], ports
    finally:
        for pid in [proc.pid, *server]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()


def test_create_section_with_an_empty_name_is_a_one_line_usage_error(ports: dict[str, int], tmp_path: Path) -> None:
    code, out, err = finish(start(environment(tmp_path / "data", **ports), "create-section", ""), timeout=60)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["rejoin create-section: name: String should have at least 1 character"]


@pytest.mark.parametrize("keys_given", [False, True])
def test_the_data_folder_rejoin_makes_is_the_owners_only(
    keys_given: bool, ports: dict[str, int], tmp_path: Path
) -> None:
    """Whichever file makes it first (a key file, or the SQLite database when keys are configured)."""
    data = tmp_path / "data"
    env = environment(data, **ports)
    if keys_given:
        env |= {"REJOIN_SECRET_KEY": "x" * 43 + "=", "REJOIN_ADMIN_KEY": "admin"}
    code, _, err = finish(start(env, "create-section", "Shop"), timeout=60)
    assert code == 0, err
    assert (data / "rejoin.db").exists()
    assert data.stat().st_mode & 0o777 == 0o700
    database = _modes(data, "rejoin.db")  # it holds PII: owner only too, whatever the umask
    assert "rejoin.db" in database and set(database.values()) == {0o600}, database


async def test_rejoin_temporal_serves_what_the_worker_needs_alone(ports: dict[str, int], tmp_path: Path) -> None:
    """`rejoin temporal` runs the dev server `rejoin dev` runs, alone: on the configured address, with
    Rejoin's search attributes (a worker and an API started apart use it as they use `rejoin dev`'s),
    its database in the data folder, owner-only."""
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.client import Client

    from runtime.dev_server import wait_until_serving
    from workflows import search

    data = tmp_path / "data"
    proc = start(environment(data, **ports), "temporal")
    try:
        await wait_until_serving(f"localhost:{ports['frontend']}", proc=proc)  # type: ignore[arg-type]
        client = await Client.connect(f"localhost:{ports['frontend']}")
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
        wanted = {definition.split("=")[0] for definition in search.cli_definitions()}
        assert wanted <= set(listed.custom_attributes), (wanted, listed.custom_attributes)
        assert _modes(data, "temporal.db") and set(_modes(data, "temporal.db").values()) == {0o600}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        finish(proc, timeout=20)


def _get_healthz(sock: socket.socket) -> bytes:
    """One whole answer (head and body, by its Content-Length) to a GET on a kept-alive connection;
    b"" if the server has closed it."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = int(lengths[0])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_rejoin_api_keeps_an_idle_connection_longer_than_client_pools_do(
    ports: dict[str, int], tmp_path: Path
) -> None:
    """A backend's pool reuses a connection idle for a few seconds (httpx: up to 5 s): the API must not
    have closed it meanwhile (uvicorn's default 5 s did, and requests were reset unseen)."""
    proc = start(environment(tmp_path / "data", ports["frontend"], ports["ui"], ports["api"]), "api")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", ports["api"]), timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, finish(proc, 5)
                time.sleep(0.2)
        with sock:
            assert _get_healthz(sock).startswith(b"HTTP/1.1 "), "no answer"
            time.sleep(6)  # idle past uvicorn's default keep-alive
            assert _get_healthz(sock).startswith(b"HTTP/1.1 "), "the API closed the idle connection"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        finish(proc, 15)


def test_a_wrong_setting_is_one_line_naming_it(ports: dict[str, int], tmp_path: Path) -> None:
    """Not a page of pydantic traceback: the variable as the operator set it, and why."""
    env = environment(tmp_path / "data", ports["frontend"], ports["ui"], ports["api"])
    env["REJOIN_BROADCAST_SHARDS"] = "0"
    code, _, err = finish(start(env, "worker"), 60)
    assert code == 1, err
    assert "REJOIN_BROADCAST_SHARDS: Input should be greater than or equal to 1" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2, err
