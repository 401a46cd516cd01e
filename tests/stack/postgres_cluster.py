"""A throwaway PostgreSQL cluster from Debian's package, on 127.0.0.1 and a free port, for the postgres tier.

    with throwaway_cluster(["airflow", "mlflow"]) as address:      # "127.0.0.1:<port>", user postgres, trust auth
        ... postgresql+psycopg2://postgres@{address}/airflow ...

initdb and the server run as the `postgres` user when the tests run as root (the server refuses root). fsync is off:
the cluster lives for one test. Stopped (fast shutdown) and deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.process.ports import free_ports


def psql(address: str, sql: str, database: str = "postgres") -> str:
    host, port = address.split(":")
    result = subprocess.run(_as_postgres(["psql", "-h", host, "-p", port, "-U", "postgres", "-d", database, "-At",
                                          "-c", sql]), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"psql {database}: {sql!r} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@contextmanager
def throwaway_cluster(databases: list[str], password_roles: tuple[str, ...] = ()) -> Iterator[str]:
    """A cluster on 127.0.0.1 where `postgres` needs no password; the roles in `password_roles` log in with theirs
    only (scram-sha-256), so a test can tell a right password from a wrong one."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        raise RuntimeError("PostgreSQL's initdb / pg_ctl are not on PATH: apt-get install postgresql (Debian's)")
    root = Path(tempfile.mkdtemp(prefix="pg-cluster-"))  # not under pytest's 0700 temp dirs: postgres must enter
    data, (port,) = root / "data", free_ports(1)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    try:
        _check(["initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        if password_roles:  # pg_hba.conf: the first matching line decides
            hba = data / "pg_hba.conf"
            hba.write_text("".join(f"host all {role} 127.0.0.1/32 scram-sha-256\n" for role in password_roles)
                           + hba.read_text())
        _check(["pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        address = f"127.0.0.1:{port}"
        for name in databases:
            psql(address, f"CREATE DATABASE {name}")
        yield address
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _check(command: list[str]) -> None:
    result = subprocess.run(_as_postgres(command), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed (exit {result.returncode}):\n{result.stdout[-1500:]}"
                           f"\n{result.stderr[-1500:]}")
