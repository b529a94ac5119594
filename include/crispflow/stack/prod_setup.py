"""Setup steps of the prod-local profile, run by `crispflow up` as `python -m crispflow.stack.prod_setup STEP`.

- `reset-state DB...`: (re)create the profile's PostgreSQL databases empty and delete its Redis keys. It runs
  when the S3 server (moto, in memory) starts, so databases never point at artifacts or lake objects that died
  with a previous S3 server.
- `buckets BUCKET...`: wait for the S3 endpoint, create the buckets (idempotent).
- `mlflow-auth-config PATH`: MLflow's basic-auth configuration (users in the MLflow database), mode 0600.
- `mlflow-users`: wait for the MLflow server, then create (or reset the password of) one user per service and
  grant it what MLFLOW_USERS says, through MLflow's auth REST API as the admin. Every other user reads only
  (`default_permission = READ`; the creator of an experiment or model manages it).
- `ledger-reader DATABASE ROLE`: the ledger database's read-only role (the Airflow api-server's UI plugin reads
  the ledger with it): LOGIN with CRISPFLOW_LEDGER_READER_PASSWORD, read-only transactions by default, SELECT on
  the tables the connecting user (the workers' user, who creates the ledger table) creates there, and nothing
  else (LEDGER_READER_GRANTS; docker-compose.yaml's postgres-init runs the same statements).

Server URLs come from the environment (CRISPFLOW_POSTGRES_URL, CRISPFLOW_REDIS_URL, CRISPFLOW_REDIS_PREFIX,
AWS_ENDPOINT_URL and the AWS_* keys, MLFLOW_AUTH_DATABASE_URI, MLFLOW_TRACKING_URI, MLFLOW_AUTH_ADMIN_* and
CRISPFLOW_MLFLOW_*_PASSWORD, CRISPFLOW_LEDGER_READER_PASSWORD), never from argv, where `ps` would show them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crispflow.stack.credentials import MLFLOW_AIRFLOW_USER, MLFLOW_SERVING_USER, MLFLOW_UI_USER, MLFLOW_VIEWER_USER
from crispflow.stack.errors import StackError

DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
WAIT_S3 = 30.0
WAIT_MLFLOW = 180.0
# What each service user may do beyond READ, on every experiment / registered model ("*"), also those the admin
# or a person created. The workers train (runs, models: EDIT on experiments) and promote (move and delete
# aliases: MANAGE on registered models). The model server, the Airflow api-server (the crispflow UI plugin: its
# buttons act through DAG runs, never through MLflow) and people browsing the MLflow UI only read.
MLFLOW_USERS: dict[str, tuple[tuple[str, str], ...]] = {
    MLFLOW_AIRFLOW_USER: (("experiment", "EDIT"), ("registered_model", "MANAGE")),
    MLFLOW_SERVING_USER: (),
    MLFLOW_UI_USER: (),
    MLFLOW_VIEWER_USER: (),
}
# the variable each user's password comes from (never argv)
MLFLOW_PASSWORD_ENV = {
    MLFLOW_AIRFLOW_USER: "CRISPFLOW_MLFLOW_AIRFLOW_PASSWORD",
    MLFLOW_SERVING_USER: "CRISPFLOW_MLFLOW_SERVING_PASSWORD",
    MLFLOW_UI_USER: "CRISPFLOW_MLFLOW_UI_PASSWORD",
    MLFLOW_VIEWER_USER: "CRISPFLOW_MLFLOW_VIEWER_PASSWORD",
}
LEDGER_READER_PASSWORD_ENV = "CRISPFLOW_LEDGER_READER_PASSWORD"
# The read-only role's privileges in the ledger database, run there by its owner or a superuser ({db}: the
# database, {reader}: the role, {owner}: the role that creates the ledger table). SELECT on the tables {owner}
# creates (the ledger table, created on first use) and on those already there; no CREATE in the schema (PostgreSQL
# 15+ revokes it from PUBLIC; older servers do not), no temporary tables; read-only transactions by default.
LEDGER_READER_GRANTS = (
    "ALTER ROLE {reader} SET default_transaction_read_only = on",
    "GRANT CONNECT ON DATABASE {db} TO {reader}",
    "REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC",
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    "GRANT USAGE ON SCHEMA public TO {reader}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {reader}",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}",
)


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise StackError(f"{name} is not set (the prod-local profile sets it for its setup steps)")
    return value


def _pg_admin(url: str, database: str = "postgres") -> Any:
    """An autocommit connection to `database` (by default the server's maintenance database `postgres`)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    try:
        conn = psycopg2.connect(
            host=parsed.host,
            port=parsed.port or 5432,
            user=parsed.username,
            password=parsed.password or None,
            dbname=database,
            connect_timeout=5,
        )
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StackError(f"PostgreSQL at {parsed.host}:{parsed.port or 5432} is not reachable: {first}") from None
    conn.autocommit = True
    return conn


def reset_state(databases: Sequence[str]) -> list[str]:
    """Drop (with FORCE) and create each database; delete the Redis keys under the profile's prefix."""
    bad = [name for name in databases if not DB_NAME.fullmatch(name)]
    if bad:
        raise StackError(f"database names must match {DB_NAME.pattern}: {bad}")
    lines = []
    with contextlib.closing(_pg_admin(_env("CRISPFLOW_POSTGRES_URL"))) as conn, conn.cursor() as cur:
        for name in databases:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{name}"')
            lines.append(f"database {name}: created empty")
    prefix = _env("CRISPFLOW_REDIS_PREFIX")
    if not prefix.endswith(":") or len(prefix) < 4:
        raise StackError(f"CRISPFLOW_REDIS_PREFIX={prefix!r}: must be at least 4 characters and end with ':'")
    import redis

    client = redis.Redis.from_url(_env("CRISPFLOW_REDIS_URL"), socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError as exc:
        raise StackError(f"Redis at {client.connection_pool.connection_kwargs.get('host')} failed: {exc}") from None
    lines.append(f"redis: {len(keys)} keys under {prefix!r} deleted")
    return lines


def setup_ledger_reader(database: str, reader: str, password: str) -> list[str]:
    """Create the ledger's read-only role (or set its password) and grant it LEDGER_READER_GRANTS in `database`,
    connected as CRISPFLOW_POSTGRES_URL's user: the workers' user, so theirs is the ledger table it may read."""
    bad = [name for name in (database, reader) if not DB_NAME.fullmatch(name)]
    if bad:
        raise StackError(f"database and role names must match {DB_NAME.pattern}: {bad}")
    if len(password) < 12:
        raise StackError(f"{LEDGER_READER_PASSWORD_ENV}: the ledger reader's password needs 12+ characters")
    import psycopg2

    url = _env("CRISPFLOW_POSTGRES_URL")
    try:
        with contextlib.closing(_pg_admin(url)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (reader,))
            exists = cur.fetchone() is not None
            verb = "ALTER" if exists else "CREATE"
            # the password as a bound parameter: quoted by psycopg2, never part of an error message
            cur.execute(f'{verb} ROLE "{reader}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s', (password,))
        with contextlib.closing(_pg_admin(url, database)) as conn, conn.cursor() as cur:
            for statement in LEDGER_READER_GRANTS:
                cur.execute(statement.format(db=f'"{database}"', reader=f'"{reader}"', owner="CURRENT_USER"))
    except psycopg2.Error as exc:
        message = (exc.pgerror or str(exc)).strip()
        first = message.splitlines()[0] if message else type(exc).__name__
        raise StackError(f"the ledger reader {reader} in {database}: {first}") from None
    return [f"ledger reader {reader}: {'password set' if exists else 'created'}; SELECT only, in {database}"]


def create_buckets(buckets: Sequence[str], wait: float = WAIT_S3) -> list[str]:
    """Create each bucket on the S3 endpoint (waiting up to `wait` s for it to answer); existing ones are kept."""
    import boto3
    from botocore.exceptions import ClientError, EndpointConnectionError

    endpoint = _env("AWS_ENDPOINT_URL")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    deadline = time.monotonic() + wait
    while True:
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            break
        except EndpointConnectionError:
            if time.monotonic() >= deadline:
                raise StackError(f"the S3 endpoint {endpoint} did not answer within {wait:.0f} s") from None
            time.sleep(0.2)
    lines = []
    for bucket in buckets:
        if bucket in existing:
            lines.append(f"bucket {bucket}: exists")
            continue
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        lines.append(f"bucket {bucket}: created")
    return lines


AUTH_CONFIG = """\
[mlflow]
default_permission = READ
database_uri = {database_uri}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# a verified password is remembered for 60 s: otherwise every API call costs the server a scrypt hash (~0.2 s
# of CPU here), and a task's registry calls and artifact downloads queue behind each other's hashing
auth_cache_ttl_seconds = 60
"""


def write_mlflow_auth_config(path: Path) -> list[str]:
    """MLflow's basic-auth ini: users in the MLflow database; the admin comes from MLFLOW_AUTH_ADMIN_* env."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = AUTH_CONFIG.format(database_uri=_env("MLFLOW_AUTH_DATABASE_URI"))
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
    return [f"MLflow auth configuration: {path}"]


def setup_mlflow_users(
    url: str, admin: str, admin_password: str, passwords: dict[str, str], wait: float = WAIT_MLFLOW
) -> list[str]:
    """Create each user of MLFLOW_USERS (or set its password if it exists) and grant exactly its permissions;
    idempotent. Unknown users in `passwords` are refused: what a user may do is decided here, not by the caller."""
    import requests

    unknown = sorted(set(passwords) - set(MLFLOW_USERS))
    if unknown:
        raise StackError(f"MLflow users: no permissions are defined for {unknown}")
    short = sorted(MLFLOW_PASSWORD_ENV[user] for user, password in passwords.items() if len(password) < 12)
    if short:
        raise StackError(f"{', '.join(short)}: MLflow passwords need 12+ characters")
    session = requests.Session()
    session.auth = (admin, admin_password)
    _wait_for_mlflow(session, url, wait)
    lines = []
    for username, password in sorted(passwords.items()):
        created = _mlflow_call(session, "POST", f"{url}/api/2.0/mlflow/users/create",
                               {"username": username, "password": password}, ok_if_exists=True)
        if not created:
            _mlflow_call(session, "PATCH", f"{url}/api/2.0/mlflow/users/update-password",
                         {"username": username, "password": password})
        for resource_type, permission in MLFLOW_USERS[username]:
            grant = {"username": username, "resource_type": resource_type, "resource_id": "*"}
            # revoke first, so a rerun leaves exactly this grant (the API refuses a duplicate)
            _mlflow_call(session, "POST", f"{url}/api/3.0/mlflow/users/permissions/revoke", grant, ok_if_missing=True)
            _mlflow_call(session, "POST", f"{url}/api/3.0/mlflow/users/permissions/grant",
                         grant | {"permission": permission})
        grants = ", ".join(f"{p} on every {t}" for t, p in MLFLOW_USERS[username]) or "read only"
        lines.append(f"MLflow user {username}: {'created' if created else 'password set'}; {grants}")
    return lines


def _wait_for_mlflow(session: Any, url: str, wait: float) -> None:
    import requests

    deadline = time.monotonic() + wait
    while True:
        try:
            if session.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            raise StackError(f"MLflow at {url} did not answer /health within {wait:.0f} s")
        time.sleep(0.5)


def _mlflow_call(session: Any, method: str, url: str, body: dict[str, str], *, ok_if_exists: bool = False,
                 ok_if_missing: bool = False) -> bool:
    """One auth API call; False if it was refused as a duplicate / missing entry and that is acceptable."""
    response = session.request(method, url, json=body, timeout=30)
    if response.status_code == 200:
        return True
    try:
        code = response.json().get("error_code", "")
    except ValueError:
        code = ""
    if (ok_if_exists and code == "RESOURCE_ALREADY_EXISTS") or (ok_if_missing and code == "RESOURCE_DOES_NOT_EXIST"):
        return False
    what = url.rsplit("/api/", 1)[-1]
    # the body is not echoed: it may hold a password
    raise StackError(f"MLflow {what} for user {body.get('username')!r} failed: HTTP {response.status_code} {code}")


def _passwords_from_env() -> dict[str, str]:
    return {username: _env(var) for username, var in MLFLOW_PASSWORD_ENV.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crispflow.stack.prod_setup", description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("reset-state").add_argument("databases", nargs="+")
    sub.add_parser("buckets").add_argument("buckets", nargs="+")
    sub.add_parser("mlflow-auth-config").add_argument("path", type=Path)
    sub.add_parser("mlflow-users")
    reader = sub.add_parser("ledger-reader")
    reader.add_argument("database")
    reader.add_argument("role")
    args = parser.parse_args(argv)
    try:
        if args.step == "reset-state":
            lines = reset_state(args.databases)
        elif args.step == "buckets":
            lines = create_buckets(args.buckets)
        elif args.step == "mlflow-auth-config":
            lines = write_mlflow_auth_config(args.path)
        elif args.step == "ledger-reader":
            lines = setup_ledger_reader(args.database, args.role, _env(LEDGER_READER_PASSWORD_ENV))
        else:
            lines = setup_mlflow_users(
                _env("MLFLOW_TRACKING_URI"),
                _env("MLFLOW_AUTH_ADMIN_USERNAME"),
                _env("MLFLOW_AUTH_ADMIN_PASSWORD"),
                _passwords_from_env(),
            )
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
