"""Least privilege on real components: private state files, per-service MLflow users on a real MLflow server,
the ledger's read-only role on the local PostgreSQL.

The server runs as the prod-local profile runs it (`--app-name basic-auth`, the auth ini `prod_setup` writes,
the admin from MLFLOW_AUTH_ADMIN_*); the users come from the profile's own setup step
(`python -m crispflow.stack.prod_setup mlflow-users`). Then each user tries the registry writes a promotion does.
The ledger reader (the Airflow api-server's UI plugin) comes from the profile's `ledger-reader` step, on a scratch
database of the PostgreSQL at 127.0.0.1:5432 (CRISPFLOW_TEST_PG_*): it reads what the workers' user writes, and every
write it tries is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from support.mlflow_server import running_mlflow
from support.permissions import loose_entries
from support.servers import ScratchDatabase, scratch_database
from support.stack import clean_env

from crispflow.stack.credentials import (
    MLFLOW_AIRFLOW_USER,
    MLFLOW_SERVING_USER,
    MLFLOW_UI_USER,
    MLFLOW_VIEWER_USER,
    Secrets,
)
from crispflow.stack.errors import StackError
from crispflow.stack.paths import StackPaths
from crispflow.stack.processes import run_setup_step
from crispflow.stack.prod_setup import (
    LEDGER_READER_PASSWORD_ENV,
    MLFLOW_PASSWORD_ENV,
    setup_mlflow_users,
    write_mlflow_auth_config,
)
from crispflow.stack.topology import API_SERVER, MLFLOW_USER_OF, SetupStep

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

MODEL = "crispflow-lp"


# --- private state ------------------------------------------------------------------------------------------------
def test_up_tightens_a_home_an_older_version_left_readable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "lake" / "raw").mkdir(parents=True)
    (home / "lake" / "raw" / "loans.csv").write_text("id,income\n1,52000\n")
    (home / "ledger.db").write_text("")
    (home / "mine").mkdir()  # not the stack's: left alone
    for path in (home, home / "lake", home / "lake" / "raw", home / "mine"):
        path.chmod(0o755)
    for path in (home / "lake" / "raw" / "loans.csv", home / "ledger.db"):
        path.chmod(0o644)
    (home / "lake" / "link").symlink_to("/etc/hostname")  # never followed, never chmodded
    old_umask = os.umask(0o022)
    try:
        StackPaths(home).create()
        assert os.umask(0o022) == 0o077, "`up` runs with umask 0o077 from then on"
    finally:
        os.umask(old_umask)
    assert [e for e in loose_entries(home) if not e.startswith("home/mine ")] == []
    assert (home / "mine").stat().st_mode & 0o777 == 0o755
    assert Path("/etc/hostname").stat().st_mode & 0o044  # the link's target is untouched


def test_every_process_the_stack_starts_creates_private_files(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "home")
    old_umask = os.umask(0o022)
    try:
        paths.create()
        os.umask(0o022)  # as if the parent's umask were the usual one: the launcher sets its own for the child
        run_setup_step(SetupStep("write", ("sh", "-c", "mkdir -p made/inner && echo x > made/inner/file")), paths)
    finally:
        os.umask(old_umask)
    made = paths.home / "made"
    assert (made / "inner" / "file").read_text() == "x\n"
    assert loose_entries(paths.home) == []


# --- per-service MLflow users -------------------------------------------------------------------------------------


@dataclass
class AuthMlflow:
    url: str
    admin: tuple[str, str]
    passwords: dict[str, str]
    step_env: dict[str, str]

    def as_user(self, user: str) -> requests.Session:
        session = requests.Session()
        session.auth = (user, self.passwords[user]) if user in self.passwords else self.admin
        return session

    def run_users_step(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crispflow.stack.prod_setup", "mlflow-users"],
                              env=self.step_env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def auth_mlflow() -> Iterator[AuthMlflow]:
    root = Path(tempfile.mkdtemp(prefix="crispflow-mlflow-auth-"))
    creds = Secrets.generate()
    os.environ["MLFLOW_AUTH_DATABASE_URI"] = f"sqlite:///{root / 'auth.db'}"
    try:
        write_mlflow_auth_config(root / "basic_auth.ini")
    finally:
        del os.environ["MLFLOW_AUTH_DATABASE_URI"]
    admin = ("admin", creds.mlflow_admin_password)
    server_env = {"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
                  "MLFLOW_AUTH_ADMIN_USERNAME": admin[0], "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": creds.mlflow_flask_secret}
    with running_mlflow(root, ("--app-name", "basic-auth"), server_env, health_auth=admin) as url:
        passwords = {MLFLOW_AIRFLOW_USER: creds.mlflow_airflow_password,
                     MLFLOW_SERVING_USER: creds.mlflow_serving_password,
                     MLFLOW_UI_USER: creds.mlflow_ui_password,
                     MLFLOW_VIEWER_USER: creds.mlflow_viewer_password}
        step_env = clean_env() | {"MLFLOW_TRACKING_URI": url, "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
                                  "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1]}
        step_env |= {MLFLOW_PASSWORD_ENV[user]: password for user, password in passwords.items()}
        mlflow = AuthMlflow(url, admin, passwords, step_env)
        result = mlflow.run_users_step()
        assert result.returncode == 0, result.stderr
        assert admin[1] not in result.stdout + result.stderr
        yield mlflow


def _call(session: requests.Session, url: str, method: str, path: str, body: dict[str, object]) -> requests.Response:
    if method == "GET":
        return session.request(method, f"{url}{path}", params=body, timeout=30)
    return session.request(method, f"{url}{path}", json=body, timeout=30)


def _new_version(session: requests.Session, url: str, experiment_id: str) -> requests.Response:
    run = _call(session, url, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment_id})
    run.raise_for_status()
    run_id = run.json()["run"]["info"]["run_id"]
    return _call(session, url, "POST", "/api/2.0/mlflow/model-versions/create",
                 {"name": MODEL, "source": f"runs:/{run_id}/model", "run_id": run_id})


@pytest.fixture(scope="module")
def admin_model(auth_mlflow: AuthMlflow) -> str:
    """An experiment, a registered model and its version 1, all created by the admin (as `crispflow demo` may)."""
    admin, url = auth_mlflow.as_user("admin"), auth_mlflow.url
    experiment = _call(admin, url, "POST", "/api/2.0/mlflow/experiments/create", {"name": "lp-admin"})
    experiment.raise_for_status()
    experiment_id = experiment.json()["experiment_id"]
    _call(admin, url, "POST", "/api/2.0/mlflow/registered-models/create", {"name": MODEL}).raise_for_status()
    _new_version(admin, url, experiment_id).raise_for_status()
    return experiment_id


def test_the_serving_user_reads_but_cannot_write_the_registry(auth_mlflow: AuthMlflow, admin_model: str) -> None:
    serving, url = auth_mlflow.as_user(MLFLOW_SERVING_USER), auth_mlflow.url
    assert _call(serving, url, "GET", "/api/2.0/mlflow/registered-models/get", {"name": MODEL}).status_code == 200
    alias = {"name": MODEL, "alias": "champion", "version": "1"}
    assert _call(serving, url, "POST", "/api/2.0/mlflow/registered-models/alias", alias).status_code == 403
    assert _new_version(auth_mlflow.as_user("admin"), url, admin_model).status_code == 200  # control: admin may
    created = _call(serving, url, "POST", "/api/2.0/mlflow/model-versions/create",
                    {"name": MODEL, "source": "mlflow-artifacts:/x/model"})
    assert created.status_code == 403
    tag = {"name": MODEL, "version": "1", "key": "crispflow.blessed", "value": "true"}
    assert _call(serving, url, "POST", "/api/2.0/mlflow/model-versions/set-tag", tag).status_code == 403
    run = _call(serving, url, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": admin_model})
    assert run.status_code == 403


def test_the_viewer_reads_but_cannot_move_an_alias(auth_mlflow: AuthMlflow, admin_model: str) -> None:
    viewer, url = auth_mlflow.as_user(MLFLOW_VIEWER_USER), auth_mlflow.url
    assert _call(viewer, url, "GET", "/api/2.0/mlflow/registered-models/get", {"name": MODEL}).status_code == 200
    alias = {"name": MODEL, "alias": "champion", "version": "1"}
    assert _call(viewer, url, "POST", "/api/2.0/mlflow/registered-models/alias", alias).status_code == 403


@pytest.mark.slow
def test_the_ui_plugins_user_reads_models_runs_and_artifacts_but_writes_nothing(
    auth_mlflow: AuthMlflow, admin_model: str
) -> None:
    """The api-server's MLflow user (the crispflow UI plugin's pages): reads everything, changes nothing."""
    assert MLFLOW_USER_OF[API_SERVER] == MLFLOW_UI_USER
    ui, admin, url = auth_mlflow.as_user(MLFLOW_UI_USER), auth_mlflow.as_user("admin"), auth_mlflow.url
    alias = {"name": MODEL, "alias": "champion", "version": "1"}
    assert _call(admin, url, "POST", "/api/2.0/mlflow/registered-models/alias", alias).status_code == 200
    reads = (
        ("/api/2.0/mlflow/registered-models/get", {"name": MODEL}),
        ("/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion"}),
        ("/api/2.0/mlflow/model-versions/get", {"name": MODEL, "version": "1"}),
        ("/api/2.0/mlflow/experiments/get", {"experiment_id": admin_model}),
    )
    for path, params in reads:
        assert _call(ui, url, "GET", path, params).status_code == 200, path
    found = _call(ui, url, "POST", "/api/2.0/mlflow/runs/search", {"experiment_ids": [admin_model]})
    assert found.status_code == 200 and found.json()["runs"], found.text
    run_id = found.json()["runs"][0]["info"]["run_id"]
    assert _call(ui, url, "GET", "/api/2.0/mlflow/runs/get", {"run_id": run_id}).status_code == 200
    assert _call(ui, url, "GET", "/api/2.0/mlflow/artifacts/list", {"run_id": run_id}).status_code == 200
    writes = (
        ("POST", "/api/2.0/mlflow/registered-models/alias", {**alias, "alias": "canary"}),
        ("DELETE", "/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion"}),
        ("POST", "/api/2.0/mlflow/model-versions/set-tag",
         {"name": MODEL, "version": "1", "key": "crispflow.blessed", "value": "true"}),
        ("POST", "/api/2.0/mlflow/registered-models/set-tag", {"name": MODEL, "key": "k", "value": "v"}),
        ("POST", "/api/2.0/mlflow/model-versions/create", {"name": MODEL, "source": "mlflow-artifacts:/x/model"}),
        ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": admin_model}),
        ("POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
    )
    for method, path, body in writes:
        assert _call(ui, url, method, path, body).status_code == 403, (method, path)
    champion = _call(admin, url, "GET", "/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion"})
    assert champion.json()["model_version"]["version"] == "1"  # the refused DELETE left it in place


def test_the_airflow_user_trains_and_promotes_on_what_the_admin_created(
    auth_mlflow: AuthMlflow, admin_model: str
) -> None:
    airflow, url = auth_mlflow.as_user(MLFLOW_AIRFLOW_USER), auth_mlflow.url
    version = _new_version(airflow, url, admin_model)  # a run in the admin's experiment, a version of its model
    assert version.status_code == 200, version.text
    number = version.json()["model_version"]["version"]
    alias = {"name": MODEL, "alias": "champion", "version": number}
    assert _call(airflow, url, "POST", "/api/2.0/mlflow/registered-models/alias", alias).status_code == 200
    tag = {"name": MODEL, "version": number, "key": "crispflow.blessed", "value": "true"}
    assert _call(airflow, url, "POST", "/api/2.0/mlflow/model-versions/set-tag", tag).status_code == 200
    unset = {"name": MODEL, "alias": "champion"}
    gone = _call(airflow, url, "DELETE", "/api/2.0/mlflow/registered-models/alias", unset)
    assert gone.status_code == 200  # a rollback deletes aliases: MANAGE on registered models


def test_a_wrong_password_is_refused(auth_mlflow: AuthMlflow) -> None:
    session = requests.Session()
    session.auth = (MLFLOW_SERVING_USER, "not-the-password")
    response = _call(session, auth_mlflow.url, "GET", "/api/2.0/mlflow/registered-models/get", {"name": MODEL})
    assert response.status_code == 401


def test_the_users_step_is_idempotent_and_sets_new_passwords(auth_mlflow: AuthMlflow, admin_model: str) -> None:
    again = auth_mlflow.run_users_step()
    assert again.returncode == 0, again.stderr
    assert _new_version(auth_mlflow.as_user(MLFLOW_AIRFLOW_USER), auth_mlflow.url, admin_model).status_code == 200

    old = auth_mlflow.passwords[MLFLOW_VIEWER_USER]
    auth_mlflow.passwords[MLFLOW_VIEWER_USER] = "a-new-viewer-password-0123"
    auth_mlflow.step_env[MLFLOW_PASSWORD_ENV[MLFLOW_VIEWER_USER]] = auth_mlflow.passwords[MLFLOW_VIEWER_USER]
    assert auth_mlflow.run_users_step().returncode == 0
    viewer = auth_mlflow.as_user(MLFLOW_VIEWER_USER)
    get = {"name": MODEL}
    assert _call(viewer, auth_mlflow.url, "GET", "/api/2.0/mlflow/registered-models/get", get).status_code == 200
    stale = requests.Session()
    stale.auth = (MLFLOW_VIEWER_USER, old)
    # update-password drops the server's cache of verified passwords: the old one stops working at once
    assert _call(stale, auth_mlflow.url, "GET", "/api/2.0/mlflow/registered-models/get", get).status_code == 401


def test_the_step_refuses_a_user_without_defined_permissions_or_a_short_password(auth_mlflow: AuthMlflow) -> None:
    with pytest.raises(StackError, match=r"no permissions are defined for \['intruder'\]"):
        setup_mlflow_users(auth_mlflow.url, *auth_mlflow.admin, {"intruder": "0123456789abcdef"})
    env = auth_mlflow.step_env | {MLFLOW_PASSWORD_ENV[MLFLOW_SERVING_USER]: "change-me"}
    result = subprocess.run([sys.executable, "-m", "crispflow.stack.prod_setup", "mlflow-users"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "CRISPFLOW_MLFLOW_SERVING_PASSWORD" in result.stderr
    assert "change-me" not in result.stderr  # a password is never echoed


# --- the ledger's read-only role ------------------------------------------------------------------------------------


@dataclass
class LedgerDb:
    db: ScratchDatabase
    reader: str
    password: str
    step_env: dict[str, str]

    @property
    def owner_url(self) -> str:
        """The workers' view: the server's user, as prod-local's CRISPFLOW_LEDGER_URL."""
        return self.db.sqlalchemy_url

    @property
    def reader_url(self) -> str:
        """The api-server's view (CRISPFLOW_LEDGER_READ_URL)."""
        return f"postgresql+psycopg2://{self.reader}:{self.password}@{self.db.host}:{self.db.port}/{self.db.name}"

    def run_step(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crispflow.stack.prod_setup", "ledger-reader", self.db.name,
                               self.reader], env=self.step_env, capture_output=True, text=True, timeout=120,
                              check=False)


@pytest.fixture(scope="module")
def ledger_db() -> Iterator[LedgerDb]:
    """A scratch ledger database and its reader role, made by the profile's step before the ledger table exists
    (as on a new stack: the workers create the table on their first promotion)."""
    password = Secrets.generate().ledger_reader_password
    with scratch_database("crispflow_lp") as db:
        server = f"postgresql://{db.user}{':' + db.password if db.password else ''}@{db.host}:{db.port}"
        ledger = LedgerDb(db, f"{db.name}_reader", password,
                          clean_env() | {"CRISPFLOW_POSTGRES_URL": server, LEDGER_READER_PASSWORD_ENV: password})
        try:
            result = ledger.run_step()
            assert result.returncode == 0, result.stderr
            assert password not in result.stdout + result.stderr
            yield ledger
        finally:
            db.admin_execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')  # its grants go with it
            db.admin_execute(f'DROP ROLE IF EXISTS "{ledger.reader}"')


def _refused(engine: Engine, statement: str) -> str:
    """Run `statement` in a read-write transaction (the role's default is read-only); the server's refusal."""
    import sqlalchemy
    from sqlalchemy.exc import DBAPIError

    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SET TRANSACTION READ WRITE"))
        with pytest.raises(DBAPIError) as refused:
            conn.execute(sqlalchemy.text(statement))
        conn.rollback()
    return str(refused.value.orig)


@pytest.mark.slow
def test_the_ledger_reader_selects_what_the_workers_write_and_nothing_else(ledger_db: LedgerDb) -> None:
    import sqlalchemy
    from sqlalchemy.exc import DBAPIError

    from crispflow.release.promotion import Ledger, cold_start, deploy

    model = "crispflow-lp"
    writer = Ledger(ledger_db.owner_url)  # the workers' first use creates the table, after the step ran
    writer.append(model, "lp-1", cold_start({}, "1", "first model"), {}, "test/run/task", state="confirmed")
    # the UI's library calls, through the read-only role
    reader = Ledger(ledger_db.reader_url)
    assert [(e["seq"], e["action"]) for e in reader.entries(model)] == [(1, "cold_start")]
    assert reader.state(model)[1] == {"champion": "1"}
    engine = sqlalchemy.create_engine(ledger_db.reader_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT count(*) FROM promotion_ledger")).scalar_one() == 1
            # by default every transaction of the role is read-only ...
            with pytest.raises(DBAPIError, match="read-only transaction"):
                conn.execute(sqlalchemy.text("UPDATE promotion_ledger SET reason = 'x'"))
            conn.rollback()
        # ... and one it makes read-write still has no privilege to write, create or drop
        insert = ("INSERT INTO promotion_ledger (model, seq, move_key, at, action, moves, tags, reason, evidence, "
                  "actor) VALUES ('m', 9, 'k9', now(), 'promote', '{}', '{}', 'r', '{}', 'a')")
        for statement in (insert, "UPDATE promotion_ledger SET reason = 'forged'", "DELETE FROM promotion_ledger",
                          "TRUNCATE promotion_ledger", "ALTER TABLE promotion_ledger ADD COLUMN forged TEXT",
                          "DROP TABLE promotion_ledger"):
            message = _refused(engine, statement)
            assert "permission denied" in message or "must be owner" in message, (statement, message)
        for statement in ("CREATE TABLE forged (x int)", "CREATE TEMPORARY TABLE forged (x int)"):
            assert "permission denied" in _refused(engine, statement), statement
    finally:
        engine.dispose()
    # nothing changed; the writer still writes
    canary = deploy({"champion": "1"}, "2", strategy="canary", share=0.2, reason="second")
    writer.append(model, "lp-2", canary, {}, "test/run/task", state="confirmed")
    assert [e["reason"] for e in reader.entries(model)] == ["first model", "second"]


@pytest.mark.slow
def test_the_ledger_reader_step_is_idempotent_and_covers_an_existing_table(ledger_db: LedgerDb) -> None:
    from crispflow.release.promotion import Ledger

    Ledger(ledger_db.owner_url)
    again = ledger_db.run_step()  # a restarted api-server reruns it; the table exists by now
    assert again.returncode == 0, again.stderr
    assert "password set" in again.stdout
    assert Ledger(ledger_db.reader_url).entries("crispflow-none") == []
    bad = ledger_db.step_env | {LEDGER_READER_PASSWORD_ENV: "short"}
    result = subprocess.run([sys.executable, "-m", "crispflow.stack.prod_setup", "ledger-reader", ledger_db.db.name,
                             ledger_db.reader], env=bad, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and LEDGER_READER_PASSWORD_ENV in result.stderr and "short" not in result.stderr


@pytest.mark.slow
def test_composes_postgres_init_makes_the_same_reader(tmp_path: Path) -> None:
    """docker-compose.yaml's first-start script, run by psql on a fresh private cluster as the postgres image runs
    it: the ledger role's table is readable by ledger_reader, which can write nothing."""
    import sqlalchemy
    import yaml
    from support.postgres import private_cluster

    from crispflow.release.promotion import Ledger, cold_start

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yaml").read_text())
    script = tmp_path / "10-crispflow-databases.sh"
    script.write_text(compose["configs"]["postgres-init"]["content"].replace("$$", "$"))  # Compose's `$$` escape
    creds = Secrets.generate()
    passwords = {"POSTGRES_PASSWORD": creds.jwt_secret[:24], "AIRFLOW_DB_PASSWORD": creds.fernet_key[:24],
                 "MLFLOW_DB_PASSWORD": creds.mlflow_admin_password, "LEDGER_DB_PASSWORD": creds.mlflow_ui_password,
                 "LEDGER_READER_DB_PASSWORD": creds.ledger_reader_password}
    with private_cluster() as cluster:
        env = clean_env() | passwords | {"POSTGRES_USER": "postgres", "PGHOST": "127.0.0.1",
                                         "PGPORT": str(cluster.port)}
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 0, result.stderr
        base = f"127.0.0.1:{cluster.port}/ledger"
        owner = Ledger(f"postgresql+psycopg2://ledger:{passwords['LEDGER_DB_PASSWORD']}@{base}")  # the workers
        owner.append("m", "k1", cold_start({}, "1", "first"), {}, "test", state="confirmed")
        owner.engine.dispose()
        reader_url = f"postgresql+psycopg2://ledger_reader:{creds.ledger_reader_password}@{base}"
        reader = Ledger(reader_url)
        assert [e["action"] for e in reader.entries("m")] == ["cold_start"]
        reader.engine.dispose()
        engine = sqlalchemy.create_engine(reader_url)
        try:
            for statement in ("UPDATE promotion_ledger SET reason = 'forged'", "DELETE FROM promotion_ledger",
                              "CREATE TABLE forged (x int)", "CREATE TEMPORARY TABLE forged (x int)"):
                assert "permission denied" in _refused(engine, statement), statement
        finally:
            engine.dispose()
        # the other databases stay closed to it
        other = sqlalchemy.create_engine(reader_url.removesuffix("/ledger") + "/airflow")
        try:
            with pytest.raises(sqlalchemy.exc.OperationalError, match="permission denied for database"):
                other.connect()
        finally:
            other.dispose()
