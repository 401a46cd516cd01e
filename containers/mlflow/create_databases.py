"""Create the MLflow server's databases next to Airflow's on the shared Postgres, owned by MLflow's own login role.

    ADMIN_DATABASE_URI=postgresql://admin:pw@host/airflow MLFLOW_DB_USER=mlflow MLFLOW_DB_PASSWORD=... \
        python /opt/create_databases.py mlflow mlflow_auth

The role (created if missing; its password set on every run, so a rotated secret takes effect when the Job runs
again) owns the named databases and nothing else: MLflow's migrations create their tables there, and it has no
privilege on Airflow's tables. Without MLFLOW_DB_USER the databases belong to the admin user (a local test
cluster). Idempotent: a re-run changes nothing but the password. Names are checked, then quoted as identifiers;
the password is a bound parameter, never SQL text.
"""

import os
import re
import sys

import psycopg2
from psycopg2 import sql

NAME = r"[a-z_][a-z0-9_]{0,62}"


def main(names: list[str]) -> int:
    role = os.environ.get("MLFLOW_DB_USER")
    for name in [*names, *([role] if role else [])]:
        if not re.fullmatch(NAME, name):
            raise SystemExit(f"name {name!r}: lowercase letters, digits and _ only")
    url = os.environ.get("ADMIN_DATABASE_URI")
    if not url:
        raise SystemExit("ADMIN_DATABASE_URI is not set (postgresql://user:password@host/existing-db)")
    password = os.environ.get("MLFLOW_DB_PASSWORD")
    if role and not password:
        raise SystemExit(f"MLFLOW_DB_PASSWORD is not set for the role {role!r}")
    connection = psycopg2.connect(url)
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with connection.cursor() as cursor:
        if role:
            ensure_role(cursor, role, password)
        for name in names:
            ensure_database(cursor, name, role)
    connection.close()
    return 0


def ensure_role(cursor, role: str, password: str) -> None:
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if cursor.fetchone() else "CREATE"
    # No SUPERUSER, CREATEDB or CREATEROLE: it logs in and owns its databases, nothing more.
    cursor.execute(sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(
        sql.Identifier(role)), (password,))
    print(f"role {role} {'updated' if verb == 'ALTER' else 'created'}")
    # RDS's master user is not a superuser: it may hand a database to the role only as a member of it.
    cursor.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))


def ensure_database(cursor, name: str, owner: str | None) -> None:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    if cursor.fetchone():
        print(f"database {name} exists")
    else:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(f"database {name} created")
    if owner:
        cursor.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(owner)))
        print(f"database {name} owned by {owner}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
