"""Setup steps of the prod-local profile, run by `crispflow up` as `python -m crispflow.stack.prod_setup STEP`.

- `reset-state DB...`: (re)create the profile's PostgreSQL databases empty and delete its Redis keys. It runs
  when the S3 server (moto, in memory) starts, so databases never point at artifacts or lake objects that died
  with a previous S3 server.
- `buckets BUCKET...`: wait for the S3 endpoint, create the buckets (idempotent).
- `mlflow-auth-config PATH`: MLflow's basic-auth configuration (users in the MLflow database), mode 0600.

Server URLs come from the environment (CRISPFLOW_POSTGRES_URL, CRISPFLOW_REDIS_URL, CRISPFLOW_REDIS_PREFIX,
AWS_ENDPOINT_URL and the AWS_* keys, MLFLOW_AUTH_DATABASE_URI), never from argv, where `ps` would show them.
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

from crispflow.stack.errors import StackError

DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
WAIT_S3 = 30.0


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise StackError(f"{name} is not set (the prod-local profile sets it for its setup steps)")
    return value


def _pg_admin(url: str) -> Any:
    """An autocommit connection to the server's maintenance database `postgres`."""
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    try:
        conn = psycopg2.connect(
            host=parsed.host,
            port=parsed.port or 5432,
            user=parsed.username,
            password=parsed.password or None,
            dbname="postgres",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crispflow.stack.prod_setup", description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("reset-state").add_argument("databases", nargs="+")
    sub.add_parser("buckets").add_argument("buckets", nargs="+")
    sub.add_parser("mlflow-auth-config").add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.step == "reset-state":
            lines = reset_state(args.databases)
        elif args.step == "buckets":
            lines = create_buckets(args.buckets)
        else:
            lines = write_mlflow_auth_config(args.path)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
