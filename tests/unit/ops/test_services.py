"""Process records of `ops.stack`: a pid is ours only with its start time; strays are found by a marker."""

import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from ops import services


def test_a_process_is_stopped_only_if_pid_and_start_time_match(tmp_path):
    record = services.start(["sleep", "60"], dict(os.environ), tmp_path / "sleep.log", tmp_path)
    assert services.alive(record)
    reused = {**record, "start_time": record["start_time"] - 1}  # same pid, another process: not ours
    assert not services.alive(reused) and not services.stop(reused)
    assert services.alive(record)
    assert services.stop(record, timeout=5) and not services.alive(record)
    assert not services.stop(record)  # stopping again: nothing to do


def test_processes_that_left_the_group_are_found_by_their_marker(tmp_path):
    marker = f"PIPELINE_STACK_HOME={tmp_path}"
    stray = subprocess.Popen(["sleep", "60"], env={**os.environ, "PIPELINE_STACK_HOME": str(tmp_path)},
                             start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, "PIPELINE_STACK_HOME": str(tmp_path / "x")})
    try:
        assert services.stop_marked(marker, spare_groups=set(), timeout=5) == [stray.pid]
        assert stray.wait(timeout=5) != 0 and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_taken_port_is_reported_with_its_holder():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not services.port_free(port)
        assert services.port_holder(port).startswith(f"pid {os.getpid()} ")
    assert services.port_free(port)


WRITE_THROUGH_AIRFLOWS_ENGINE = """
import time
from airflow import settings
from sqlalchemy import text
print("ready", flush=True)
started = time.monotonic()
with settings.engine.begin() as connection:
    connection.execute(text("CREATE TABLE written_while_locked (x INTEGER)"))
print(f"waited {time.monotonic() - started:.1f}", flush=True)
"""


def test_airflows_engine_waits_out_a_lock_longer_than_sqlites_default_5_s(tmp_path):
    """The stack's Airflow URL: a write that finds the DB locked for 6 s (another Airflow process committing)
    waits and succeeds, instead of 'database is locked' after SQLite's default 5 s (an HTTP 500 from the api-server)."""
    url = services.airflow_sqlite(tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve()}/airflow.db?timeout={services.SQLITE_BUSY_TIMEOUT_S}"
    holder = sqlite3.connect(tmp_path / "airflow.db", isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")  # as Airflow sets it on every connection
    writer = subprocess.Popen([sys.executable, "-c", WRITE_THROUGH_AIRFLOWS_ENGINE], stdout=subprocess.PIPE, text=True,
                              env={**{k: v for k, v in os.environ.items() if k != "AIRFLOW__CORE__UNIT_TEST_MODE"},
                                   "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})
    try:
        holder.execute("BEGIN EXCLUSIVE")
        while (line := writer.stdout.readline()) and line.strip() != "ready":  # Airflow logs to stdout first
            pass
        time.sleep(6)
        holder.execute("COMMIT")
        out, _ = writer.communicate(timeout=60)
    finally:
        writer.kill()
        holder.close()
    assert writer.returncode == 0, out
    assert float(out.split()[-1]) >= 5.5, out



@pytest.fixture
def answering():
    """A real HTTP server on 127.0.0.1 answering POSTs with the codes it is given in turn (then 200)."""
    servers = []

    def serve(codes: list[int]) -> tuple[str, list]:
        bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                code = codes.pop(0) if codes else 200
                answer = {200: {"id": len(bodies)}, 503: {"detail": "Database is locked."},
                          422: {"detail": "from_date must be before to_date"}}[code]
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(answer).encode())

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/api/v2/backfills", bodies

    yield serve
    for server in servers:
        server.shutdown()


def test_a_locked_database_answer_is_retried_until_the_post_goes_through(answering):
    url, bodies = answering([503, 503])
    assert services.post_json(url, {"dag_id": "d"}, pause=0.05) == {"id": 3}
    assert bodies == [{"dag_id": "d"}] * 3


def test_a_client_error_is_said_at_once_in_the_servers_words_and_never_retried(answering):
    url, bodies = answering([422])
    with pytest.raises(RuntimeError, match=r"POST .*/backfills -> HTTP 422: .*from_date must be before to_date"):
        services.post_json(url, {"a": 1}, pause=0.05)
    assert len(bodies) == 1


def test_a_lock_that_lasts_is_an_error_after_busy_for(answering):
    url, bodies = answering([503] * 1000)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"HTTP 503: .*Database is locked"):
        services.post_json(url, {}, busy_for=0.5, pause=0.1)
    assert time.monotonic() - started < 5 and 2 <= len(bodies) <= 7
