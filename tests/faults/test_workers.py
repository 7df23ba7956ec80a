"""`ally-gateway serve --workers N` as an operator runs it: real processes on one port, the real
Redis, `PORT=0`. Which process answered is read from Linux's /proc (who holds the accepted
socket), so nothing in an answer tells an outsider how many processes there are."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as redis_sync

from foundation.config import Settings
from tests.support.gateway import REDIS_URL, make_settings, random_public_key
from tests.support.subprocess_gateway import ROOT, environment
from tests.support.supervised import Supervised, alive, command_of, get, gone, holder, in_session, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT and /proc")]

CONNECTIONS = 24
"""Fresh connections per check; the kernel spreads them by address hash, so all 24 landing on
one of two processes happens once in 2^23 runs."""


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(tmp_path)
    yield settings
    client = redis_sync.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{settings.key_prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return environment(settings, PORT="0", ALLY_LOG_LEVEL="INFO", **extra)


@pytest.fixture
def two(settings: Settings, tmp_path: Path) -> Iterator[Supervised]:
    gateway = Supervised(env_of(settings), tmp_path / "gateway.log", "serve", "--workers", "2")
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


def holders(gateway: Supervised, path: str = "/healthz") -> list[int | None]:
    """Who answered each of `CONNECTIONS` fresh connections (every answer must be 200)."""
    found = []
    for _ in range(CONNECTIONS):
        status, _body, sock = get(gateway.port, path)
        assert status == 200
        found.append(holder(sock, gateway.children()))
        sock.close()
    return found


def metric(body: bytes, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.M)
    assert match is not None, name
    return float(match.group(1))


def test_two_processes_answer_on_one_port(two: Supervised):
    children = two.children()
    assert len(children) == 2
    assert set(holders(two)) == set(children), "both processes took connections, and nobody else"
    ready = [e for e in two.entries() if e["msg"] == "process ready"]
    assert sorted(e["pid"] for e in ready) == children
    listening = [e for e in two.entries() if e["msg"] == "listening"]
    assert len(listening) == 1, "one line gives the port, once both serve"
    assert listening[0]["port"] == two.port != 0
    assert listening[0]["processes"] == 2


def test_a_scrape_answers_the_sum_over_every_process(two: Supervised):
    answered = holders(two)
    assert len(set(answered)) == 2, "the requests were spread over both processes"
    name = 'ally_http_requests_total{route="/healthz",status="200"}'
    scrapers = set()
    for _ in range(8):
        status, body, sock = get(two.port, "/metrics")
        assert status == 200
        scrapers.add(holder(sock, two.children()))
        sock.close()
        assert metric(body, name) == CONNECTIONS, "every process's count, whoever answered"
    assert len(scrapers) == 2, "both processes answered scrapes (else the sum was never tested)"


def test_a_killed_process_is_replaced_and_the_port_keeps_answering(two: Supervised):
    victim, survivor = two.children()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: gone(victim), what="the killed process reaped")
    replaced = False
    while not replaced:  # every fresh connection meanwhile is answered (by the survivor)
        status, _body, sock = get(two.port, "/healthz")
        sock.close()
        assert status == 200
        now = two.children()
        replaced = len(now) == 2 and victim not in now
    (newcomer,) = set(two.children()) - {survivor}
    wait_until(lambda: any(e.get("pid") == newcomer for e in two.entries() if e["msg"] == "process ready"))
    assert set(holders(two)) == {survivor, newcomer}, "the new process takes connections"
    exited = [e for e in two.entries() if e["msg"] == "process exited; starting another"]
    assert [(e["pid"], e["exit"]) for e in exited] == [(victim, "killed by SIGKILL")]
    assert two.proc is not None and two.proc.poll() is None


def test_sigterm_stops_every_process_cleanly_and_exits_0(two: Supervised):
    children = two.children()
    parent_id = next(e["request_id"] for e in two.entries() if e["msg"] == "listening")
    assert two.proc is not None
    two.proc.send_signal(signal.SIGTERM)
    assert two.wait() == 0
    assert in_session(two.pid) == [], "no process of the tree is left"
    assert not any(alive(pid) for pid in children)
    # Each process ran its own clean shut-down, under its own id (not the parent's).
    stopped = {e["request_id"] for e in two.entries() if e["msg"] == "shutting down"}
    assert len(stopped) == 2
    assert parent_id not in stopped
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", two.port), timeout=5).close()
    assert "Traceback" not in two.text()
    assert not [e for e in two.entries() if e["level"] in ("error", "warning")]


def test_the_worker_role_runs_n_delivery_processes_and_no_port(settings: Settings, tmp_path: Path):
    gateway = Supervised(env_of(settings), tmp_path / "gateway.log", "serve", "--role", "worker", "--workers", "2")
    try:
        entry = gateway.start("worker running")
        assert entry["processes"] == 2
        assert len(gateway.children()) == 2
        assert not [e for e in gateway.entries() if e["msg"] == "listening"]
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.wait() == 0
        assert len([e for e in gateway.entries() if e["msg"] == "shutting down"]) == 2
    finally:
        gateway.stop()


def test_no_process_outlives_a_killed_parent(two: Supervised):
    children = two.children()
    assert two.proc is not None
    two.proc.kill()
    two.proc.wait()
    # The parent-death signal is SIGTERM: each process still shuts down as it would alone.
    wait_until(lambda: in_session(two.pid) == [], what="every process gone after kill -9 of the parent")
    assert not any(alive(pid) for pid in children)
    assert len([e for e in two.entries() if e["msg"] == "shutting down"]) == 2
    # What a killed parent cannot clean up: its directory of metrics files (as documented).
    for left in Path(tempfile.gettempdir()).glob("ally-metrics-*"):
        if any(left.glob(f"*_{pid}.db") for pid in (two.pid, *children)):
            shutil.rmtree(left)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--workers", "2"), {"ALLY_ENV": "staging"}, "ALLY_ENV"),
        ((), {"ALLY_WORKERS": "0"}, "ALLY_WORKERS"),
        (("--workers", "0"), {}, "--workers"),
    ],
)
def test_a_bad_setting_stops_the_parent_before_any_process_starts(
    settings: Settings, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named: str
):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", *args],
        env={**env_of(settings, ALLY_WORKERS="2"), **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert named in stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    assert stdout == ""
    assert in_session(proc.pid) == []
    assert not (settings.data_dir / "redis").exists(), "no embedded Redis was started"


def test_a_taken_port_stops_the_parent_before_any_process_starts(settings: Settings, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--workers", "2"],
            env={**env_of(settings), "PORT": port},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["ally-gateway: [Errno 98] Address already in use"]


def test_processes_that_keep_failing_at_start_up_stop_the_parent(settings: Settings, tmp_path: Path):
    # A setting only a running process can check: this Redis is no cluster node.
    gateway = Supervised(
        env_of(settings, ALLY_REDIS_CLUSTER="true"), tmp_path / "gateway.log", "serve", "--workers", "2"
    )
    gateway.spawn()
    try:
        assert gateway.wait() == 1
        last = gateway.text().strip().splitlines()[-1]
        assert last.startswith("ally-gateway: a process exited during start-up 3 times in a row")
        assert "Cluster mode is not enabled" in last
        assert in_session(gateway.pid) == []
        restarts = [e for e in gateway.entries() if e["msg"] == "process exited; starting another"]
        assert [e["restart_in_seconds"] for e in restarts if e["restart_in_seconds"] > 0.5], "backing off"
        assert len(restarts) <= 4, "two slots, at most two restarts each before giving up"
        assert not [e for e in gateway.entries() if e["msg"] == "listening"]
    finally:
        gateway.stop()


def test_the_embedded_redis_is_started_once_by_the_parent(settings: Settings, tmp_path: Path):
    env = env_of(settings)
    env.pop("ALLY_REDIS_URL")
    gateway = Supervised(env, tmp_path / "gateway.log", "serve", "--workers", "2")
    try:
        gateway.start()
        redis_pid = int((settings.data_dir / "redis" / "redis.pid").read_text())
        servers = [pid for pid in gateway.children() if "redis-server" in command_of(pid)]
        assert servers == [redis_pid], "one Redis, the parent's child"
        assert len(gateway.children()) == 3
        admin = {"Authorization": f"Bearer {settings.admin_token}"}
        status, _body, sock = put_user(gateway.port, "shared", admin)
        sock.close()
        assert status == 201
        answered = set()
        for _ in range(CONNECTIONS):  # every process reads what one of them wrote
            status, body, sock = get(gateway.port, "/admin/v1/users/shared", admin)
            answered.add(holder(sock, gateway.children()))
            sock.close()
            assert status == 200, body
            assert orjson.loads(body)["user_id"] == "shared"
        assert len(answered) == 2
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.wait() == 0
        wait_until(lambda: not alive(redis_pid), what="the embedded Redis stopped with the parent")
    finally:
        gateway.stop()


def put_user(port: int, user_id: str, headers: dict[str, str]) -> tuple[int, bytes, socket.socket]:
    body = orjson.dumps({"server_url": "https://srv.example", "server_public_key": random_public_key()})
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        f"PUT /admin/v1/users/{user_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = sock.recv(65536)
    return int(answer.split(b" ")[1]), answer, sock
