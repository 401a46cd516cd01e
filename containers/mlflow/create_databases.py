"""Create the MLflow server's databases next to Airflow's on the shared Postgres, if they are missing.

    python /opt/create_databases.py mlflow mlflow_auth       # ADMIN_DATABASE_URI=postgresql://user:pw@host/airflow

Idempotent (a re-run of the init Job changes nothing). Names are checked, then quoted as identifiers.
"""

import os
import re
import sys

import psycopg2
from psycopg2 import sql


def main(names: list[str]) -> int:
    for name in names:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise SystemExit(f"database name {name!r}: lowercase letters, digits and _ only")
    url = os.environ.get("ADMIN_DATABASE_URI")
    if not url:
        raise SystemExit("ADMIN_DATABASE_URI is not set (postgresql://user:password@host/existing-db)")
    connection = psycopg2.connect(url)
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone():
                print(f"database {name} exists")
                continue
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"database {name} created")
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
