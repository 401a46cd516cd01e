"""The cluster's MLflow server image (containers/mlflow/Dockerfile), run for real: its init script creates the
`mlflow` and `mlflow_auth` databases on a throwaway PostgreSQL, owned by MLflow's own login role (twice, the second
time with a rotated password: idempotent, and the new password is the one that logs in), then the server runs on
them as that role behind MLflow's basic-auth app, as infra/terraform/mlflow.tf starts it: no anonymous access, a
user with the default READ permission cannot move the `champion` alias of a model another user registered, and
the role can read nothing of Airflow's."""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from podman_engine import podman, require_image
from postgres_cluster import psql, throwaway_cluster

from pipeline.process.ports import free_ports

pytestmark = pytest.mark.containers
MLFLOW_IMAGE = "localhost/chat-retrain-mlflow:3.17.2"
ADMIN = ("admin", "admin-password-for-this-test")
ROLE = "mlflow"


def api(url: str, path: str, auth=None, **body) -> requests.Response:
    return requests.post(f"{url}/api/2.0/mlflow/{path}", json=body, auth=auth, timeout=30)


@pytest.mark.timeout(600)
def test_mlflow_image_creates_its_databases_and_serves_behind_basic_auth(tmp_path):
    require_image(MLFLOW_IMAGE)
    name = f"mlflow-{uuid.uuid4().hex[:8]}"
    with throwaway_cluster(["airflow"], password_roles=(ROLE,)) as address:
        psql(address, "CREATE TABLE dag_run (id int); INSERT INTO dag_run VALUES (1)", "airflow")  # Airflow's
        for password in ("first-password", "rotated-password"):  # the init Job may run again, after a rotation
            podman("run", "--rm", "--network", "host", "-e", f"ADMIN_DATABASE_URI=postgresql://postgres@{address}/airflow",
                   "-e", f"MLFLOW_DB_USER={ROLE}", "-e", f"MLFLOW_DB_PASSWORD={password}",
                   MLFLOW_IMAGE, "python", "/opt/create_databases.py", "mlflow", "mlflow_auth")
        owners = psql(address, "SELECT datname || ':' || pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE "
                               "'mlflow%' ORDER BY 1")
        assert owners.split() == [f"mlflow:{ROLE}", f"mlflow_auth:{ROLE}"]
        assert psql(address, f"SELECT rolsuper::text || rolcreatedb::text || rolcreaterole::text FROM pg_roles "
                             f"WHERE rolname = '{ROLE}'") == "falsefalsefalse"
        host, port_ = address.split(":")
        as_role = f"postgresql+psycopg2://{ROLE}:rotated-password@{address}"
        refused = podman("run", "--rm", "--network", "host", MLFLOW_IMAGE,
                         "python", "-c", "import psycopg2, sys; c = psycopg2.connect(sys.argv[1]).cursor(); "
                         "c.execute('SELECT * FROM dag_run')",
                         f"host={host} port={port_} dbname=airflow user={ROLE} password=rotated-password", check=False)
        assert refused.returncode != 0 and b"permission denied" in refused.stderr  # nothing of Airflow's
        stale = podman("run", "--rm", "--network", "host", MLFLOW_IMAGE, "python", "-c",
                       "import psycopg2, sys; psycopg2.connect(sys.argv[1])",
                       f"host={host} port={port_} dbname=mlflow user={ROLE} password=first-password", check=False)
        assert stale.returncode != 0 and b"password authentication failed" in stale.stderr  # rotated away

        ini = "\n".join(["[mlflow]", "default_permission = READ",
                         f"database_uri = {as_role}/mlflow_auth",
                         f"admin_username = {ADMIN[0]}", f"admin_password = {ADMIN[1]}",
                         "authorization_function = mlflow.server.auth:authenticate_request_basic_auth", ""])
        podman("secret", "create", name, "-", stdin=ini.encode())
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        try:
            podman("run", "-d", "--name", name, "--network", "host", "--secret", f"{name},target=basic_auth.ini",
                   "-e", "MLFLOW_AUTH_CONFIG_PATH=/run/secrets/basic_auth.ini",
                   "-e", f"MLFLOW_FLASK_SERVER_SECRET_KEY={uuid.uuid4().hex}", MLFLOW_IMAGE,
                   "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
                   "--backend-store-uri", f"{as_role}/mlflow",
                   "--artifacts-destination", "/tmp/artifacts")
            deadline = time.monotonic() + 180
            while True:
                try:
                    if requests.get(f"{url}/health", timeout=5).status_code == 200:  # open: the probes need it
                        break
                except requests.ConnectionError:
                    pass
                running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.decode().strip()
                assert running == "true" and time.monotonic() < deadline, \
                    podman("logs", name).stderr.decode()[-3000:]
                time.sleep(2)

            assert api(url, "experiments/create", name="anonymous").status_code == 401
            pipeline, reader = ("pipeline", "pipeline-password-1"), ("reader", "reader-password-12")
            for user in (pipeline, reader):
                created = api(url, "users/create", ADMIN, username=user[0], password=user[1])
                assert created.ok, created.text
            assert api(url, "registered-models/create", pipeline, name="chat").ok
            assert api(url, "model-versions/create", pipeline, name="chat", source="s3://artifacts/m/1").ok
            assert api(url, "registered-models/alias", pipeline, name="chat", alias="champion", version="1").ok
            moved = api(url, "registered-models/alias", reader, name="chat", alias="champion", version="1")
            assert moved.status_code == 403, moved.text  # READ: it may look, not promote
            tables = psql(address, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'users'",
                          database="mlflow_auth")
            assert tables == "1"  # the users live in the auth database on Postgres (psycopg2 in the image)
        finally:
            podman("rm", "--force", name, check=False)
            podman("secret", "rm", name, check=False)
