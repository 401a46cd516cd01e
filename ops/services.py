"""Long-running local processes for `ops.stack`: start, identify, health-check and stop them safely.

A service is recorded by pid AND the process start time (field 22 of /proc/<pid>/stat, in clock ticks since boot):
a pid alone can be reused by an unrelated process after ours has died, and `stack down` must never signal that
one. Each service is started as the leader of its own session, so its pid is also its process group and session
id, and stopping it stops the workers it forked (uvicorn workers, the scheduler's executor and task processes).
Linux only (/proc). Not run directly: `python -m ops.stack up|status|down`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


def start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> dict:
    """Start `command` detached (new session), output appended to `log`; return its state record."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        handle.flush()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return {"pid": process.pid, "start_time": start_time(process.pid), "started_at": time.time(), "log": str(log),
            "command": command}


def start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot, or None if there is no such process (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])


def alive(record: dict | None) -> bool:
    """True if the recorded process still runs: same pid AND same start time (not a reused pid)."""
    return bool(record) and record.get("start_time") is not None and start_time(record["pid"]) == record["start_time"]


def group_members(record: dict) -> list[int]:
    """Processes still in the service's process group (the leader may be gone, its workers not)."""
    leader = start_time(record["pid"])
    if leader is not None and leader != record["start_time"]:
        return []  # the pid was reused, which Linux does only once no process group has that id: ours is empty
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] the state (Z: exited, not yet reaped), fields[2] the pgid, fields[19] the start time.
        if fields[0] != "Z" and int(fields[2]) == record["pid"] and int(fields[19]) >= record["start_time"]:
            members.append(int(entry.name))
    return members


def stop(record: dict, timeout: float = 30.0) -> bool:
    """SIGTERM the service's process group, wait, then SIGKILL what is left. False if nothing of it was running."""
    if not alive(record) and not group_members(record):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(record["pid"], sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 10)
        while time.monotonic() < deadline:
            if not group_members(record):
                return True
            time.sleep(0.2)
    return True


def stop_marked(marker: str, spare_groups: set[int], timeout: float = 30.0) -> list[int]:
    """Stop processes whose environment contains `marker` (NAME=value) outside the `spare_groups`: descendants that
    left their service's process group, like the commands Airflow's bash tasks run in a session of their own."""
    needle = marker.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes() + b"\0"
            pgid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, IndexError, ValueError):
            continue
        if needle in environ and pgid not in spare_groups:
            found.append(int(entry.name))
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(start_time(pid) is not None for pid in found):
            time.sleep(0.2)
    return found


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port now. SO_REUSEADDR as servers set it, so connections in
    TIME_WAIT from a stopped service do not count as taken; a listener on 0.0.0.0 does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str | None:
    """'pid N (command)' of the process listening on `port`, if /proc lets us see it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(parts[9])
    for entry in Path("/proc").iterdir():
        if not inodes or not entry.name.isdigit():
            continue
        try:
            if any(_link(fd) in {f"socket:[{inode}]" for inode in inodes} for fd in (entry / "fd").iterdir()):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {entry.name} ({command[:120]})"
        except OSError:
            continue
    return None


def _link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile (e.g. the descriptor that lists /proc/self/fd)
        return None


def http_ok(url: str, timeout: float = 3.0) -> bool:
    """Any HTTP answer below 500 means the server is up (S3 answers 403 to an unsigned request)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict, timeout: float = 90.0, busy_for: float = 300.0, pause: float = 5.0) -> dict:
    """POST `body` as JSON and return the JSON answer. HTTP 503 is retried for up to `busy_for` seconds: Airflow's
    api-server answers 503 ("Database is locked ... on SQLite under concurrent access") when SQLite refuses a lock
    upgrade at once (a deadlock: its busy timeout does not apply), and the endpoint has rolled back, so nothing was
    created. Any other HTTP error, or 503 for longer, raises RuntimeError with the server's own words."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + busy_for
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            answer = error.read().decode(errors="replace")
            if error.code != 503 or time.monotonic() + pause > deadline:
                raise RuntimeError(f"POST {url} -> HTTP {error.code}: {answer}") from None
        time.sleep(pause)


def wait_until(ready: Callable[[], bool], record: dict, timeout: float) -> bool:
    """Poll `ready` until it is true; give up early if the service's process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive(record):
            return False
        time.sleep(0.5)
    return False


def tail(path: str | Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# SQLite's default busy timeout is 5 s. On 2 cores, with training running, the scheduler, dag-processor and
# api-server can keep each other waiting longer than that; a REST call (a backfill being created) then fails with
# HTTP 500 from a commit in Airflow's audit-log dependency, which is outside the endpoint's own 503 handling.
SQLITE_BUSY_TIMEOUT_S = 60


def airflow_sqlite(airflow_home: str | Path) -> str:
    """Airflow's default SQLite metadata DB in `airflow_home`, waiting for a lock up to SQLITE_BUSY_TIMEOUT_S."""
    return f"sqlite:///{Path(airflow_home).resolve() / 'airflow.db'}?timeout={SQLITE_BUSY_TIMEOUT_S}"
