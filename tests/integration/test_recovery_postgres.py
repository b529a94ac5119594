"""PostgreSQL restarted during a promotion: the promotion ledger on a real PostgreSQL server (prod-local's ledger
backend), alias moves against a real MLflow server, the database crashed or restarted at the worst moments.

Kept at the library level (`crispflow.release.promotion`, as the release tasks call it) with a private,
throw-away PostgreSQL cluster (tests/support/postgres.py: initdb on a free port; the machine's shared server is
never touched). A task that fails is retried the way Airflow retries it: a new process (a new `Ledger`), the same
`move_key`. Afterwards the ledger and the registry agree and `champion` is the old or the new version, never half.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
from support.mlflow_server import small_versions
from support.postgres import PrivateCluster

from crispflow.model import registry
from crispflow.release import promotion
from crispflow.release.promotion import Ledger

pytest_plugins = ["support.mlflow_server", "support.postgres"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PERSON = "recovery-test"  # who the moves are made for (recorded in each ledger entry)
REGISTRY_WRITES = ("set_registered_model_tag", "set_registered_model_alias", "delete_registered_model_alias")


class WorkerKilled(Exception):
    """Stands for the task's process dying (OOM kill, node loss) at the moment it is raised."""


class FaultyClient:
    """An MlflowClient whose first registry write (the first step after the ledger entry) runs `fault` first."""

    def __init__(self, mlf: Any, fault: Callable[[], None]) -> None:
        self._mlf, self._fault, self.fired = mlf, fault, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._mlf, name)
        if name not in REGISTRY_WRITES or self.fired:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            self.fired = True
            self._fault()
            return attr(*args, **kwargs)

        return write


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture
def model(mlf, request) -> tuple[str, list[str]]:
    """A registered model of its own per test, with two complete, blessed versions; v1 is champion."""
    name = f"crispflow-t_pgrec_{request.node.name[-20:].strip('_')}_{uuid.uuid4().hex[:4]}"
    return name, small_versions(mlf, name, "t_pgrec", 2, rows=1500)


@pytest.fixture
def ledger_url(pg_cluster: PrivateCluster) -> Iterator[str]:
    """A fresh database on the private cluster for this test's ledger."""
    name = f"ledger_{uuid.uuid4().hex[:10]}"
    admin(pg_cluster, f'CREATE DATABASE "{name}"')
    yield pg_cluster.url(name)
    if not pg_cluster.running():  # a test that failed while the server was down: up again for the next one
        pg_cluster.start()
    with contextlib.suppress(Exception):
        admin(pg_cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin(cluster: PrivateCluster, sql: str) -> None:
    with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=cluster.port, user="postgres",
                                             dbname="postgres", connect_timeout=5)) as conn:
        conn.autocommit = True
        conn.cursor().execute(sql)


def cold_start(mlf, ledger: Ledger, name: str, version: str) -> None:
    promotion.promote_first_blessed(mlf, ledger, name, version, run_key="train/r1/register", person=PERSON)


def switch(mlf, ledger: Ledger, name: str, version: str, key: str) -> dict[str, Any]:
    """The blue-green deployment task: `champion` → version, the old champion kept as `previous`."""
    return promotion.deploy_version(mlf, ledger, name, version, strategy="blue_green", share=1.0,
                                    reason="blessed retrain", move_key=key, person=PERSON)


def assert_agree(mlf, ledger: Ledger, name: str, expected: dict[str, str | None]) -> None:
    """The registry holds `expected`; the ledger's recorded aliases say the same; nothing is pending."""
    assert promotion.registry_state(mlf, name) == expected
    recorded = ledger.state(name)[1]
    assert {a: recorded.get(a) for a in ("champion", "previous")} == {a: expected[a] for a in ("champion", "previous")}
    assert promotion.verify(mlf, ledger, name) == []
    assert all(e["state"] == "confirmed" and e["person"] == PERSON for e in ledger.entries(name)), ledger.entries(name)


def test_a_restart_between_two_promotions_is_invisible(mlf, model, ledger_url, pg_cluster) -> None:
    """The ledger's pooled connections die with the server; the next promotion reconnects and succeeds."""
    name, (v1, v2) = model
    ledger = Ledger(ledger_url)
    cold_start(mlf, ledger, name, v1)
    pg_cluster.restart("fast")  # every pooled connection is now dead
    switch(mlf, ledger, name, v2, "deploy/r2/switch")
    assert_agree(mlf, ledger, name, {"champion": v2, "canary": None, "shadow": None, "previous": v1})
    assert [e["action"] for e in ledger.entries(name)] == ["cold_start", "blue_green"]


def test_a_crash_inside_the_ledger_transaction_moves_nothing(mlf, model, ledger_url, pg_cluster) -> None:
    """The server crashes while the promotion's ledger transaction is open (its INSERT in flight): the task fails,
    nothing is recorded, the registry is untouched; the retry (same move_key) makes the move once."""
    from sqlalchemy import event
    from sqlalchemy.exc import DBAPIError

    name, (v1, v2) = model
    cold_start(mlf, Ledger(ledger_url), name, v1)
    before = promotion.registry_state(mlf, name)
    ledger = Ledger(ledger_url)
    crashed = []

    @event.listens_for(ledger.engine, "before_cursor_execute")
    def crash(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO PROMOTION_LEDGER") and not crashed:
            crashed.append(statement)
            pg_cluster.stop("immediate")

    with pytest.raises(DBAPIError):
        switch(mlf, ledger, name, v2, "deploy/r2/switch")
    assert crashed
    pg_cluster.start()
    assert promotion.registry_state(mlf, name) == before  # nothing moved
    retry = Ledger(ledger_url)  # the retry: a new process
    assert [e["action"] for e in retry.entries(name)] == ["cold_start"]  # nothing recorded

    moved = switch(mlf, retry, name, v2, "deploy/r2/switch")
    assert moved["action"] == "blue_green" and not moved["replayed"]
    assert_agree(mlf, retry, name, {"champion": v2, "canary": None, "shadow": None, "previous": v1})
    assert [e["move_key"] for e in retry.entries(name)][-1] == "deploy/r2/switch"
    assert len(retry.entries(name)) == 2


def test_the_worker_dies_between_the_ledger_entry_and_the_registry_move(mlf, model, ledger_url, pg_cluster) -> None:
    """The ledger entry is committed; the server crashes and the task's process dies before the first registry
    write. Until the retry, `champion` is still the old version (never half-moved); the retry (same move_key)
    finds its entry, completes the move once, and the ledger and the registry agree."""
    name, (v1, v2) = model
    cold_start(mlf, Ledger(ledger_url), name, v1)
    ledger = Ledger(ledger_url)

    def die() -> None:
        pg_cluster.stop("immediate")
        raise WorkerKilled("the task's process died between the ledger entry and the registry move")

    with pytest.raises(WorkerKilled):
        switch(FaultyClient(mlf, die), ledger, name, v2, "deploy/r2/switch")
    pg_cluster.start()
    assert promotion.registry_state(mlf, name)["champion"] == v1  # old, not half
    retry = Ledger(ledger_url)  # the retry: a new process
    # Until the retry completes it, the ledger does not claim a move the registry has not made: the entry is a
    # pending intent, and `verify` names it.
    assert retry.state(name)[1].get("champion") == v1, retry.entries(name)
    assert [(d.alias, d.kind) for d in promotion.verify(mlf, retry, name) if d.alias == "champion"] == [
        ("champion", "pending")]

    done = switch(mlf, retry, name, v2, "deploy/r2/switch")
    assert done["action"] == "blue_green" and done["replayed"]
    assert_agree(mlf, retry, name, {"champion": v2, "canary": None, "shadow": None, "previous": v1})
    assert [e["action"] for e in retry.entries(name)] == ["cold_start", "blue_green"]  # recorded once


def test_the_database_is_down_while_the_registry_moves(mlf, model, ledger_url, pg_cluster) -> None:
    """The server crashes right after the ledger entry and stays down while the registry is written (and while
    the move would be confirmed); a retry while it is still down fails without moving anything else; once it is
    back, the retry (same move_key) leaves the ledger and the registry agreeing, the move recorded once."""
    from sqlalchemy.exc import DBAPIError

    name, (v1, v2) = model
    cold_start(mlf, Ledger(ledger_url), name, v1)
    ledger = Ledger(ledger_url)
    faulty = FaultyClient(mlf, lambda: pg_cluster.stop("immediate"))
    try:
        first = switch(faulty, ledger, name, v2, "deploy/r2/switch")
    except DBAPIError:
        first = None  # the move could not be confirmed: the task fails, Airflow retries it
    assert faulty.fired
    assert promotion.registry_state(mlf, name)["champion"] in (v1, v2)  # old or new, never half
    with pytest.raises(DBAPIError):  # a retry while the database is down: an error, not a second move
        Ledger(ledger_url)
    pg_cluster.start()

    retry = Ledger(ledger_url)
    if first is None:  # the registry moved, the confirmation did not happen: `verify` says so until the retry
        assert {(d.alias, d.kind) for d in promotion.verify(mlf, retry, name)} >= {("champion", "pending")}
    done = switch(mlf, retry, name, v2, "deploy/r2/switch")
    assert done["action"] == "blue_green"
    assert done["replayed"] or first is None
    assert_agree(mlf, retry, name, {"champion": v2, "canary": None, "shadow": None, "previous": v1})
    assert [e["action"] for e in retry.entries(name)] == ["cold_start", "blue_green"]


def test_the_commit_reaches_the_server_but_its_answer_is_lost(mlf, model, ledger_url, pg_cluster) -> None:
    """The in-doubt commit: the server makes the ledger entry durable and crashes before answering, so the task sees
    a connection error although the entry exists. The registry is untouched; the retry (same move_key) finds the
    entry, completes the move once, and the ledger and the registry agree."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import DBAPIError

    name, (v1, v2) = model
    cold_start(mlf, Ledger(ledger_url), name, v1)
    ledger = Ledger(ledger_url)
    armed: list[str] = []

    class AnswerLost(psycopg2.extensions.connection):
        """Commits on the server, then the server crashes before the client hears back (once, when armed)."""

        def commit(self) -> None:
            super().commit()
            if armed and armed[0] != "fired":
                armed[:] = ["fired"]
                pg_cluster.stop("immediate")
                raise psycopg2.OperationalError("server closed the connection unexpectedly")

    ledger.engine = create_engine(ledger_url, pool_pre_ping=True, connect_args={"connection_factory": AnswerLost})

    @event.listens_for(ledger.engine, "before_cursor_execute")
    def arm(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO PROMOTION_LEDGER") and not armed:
            armed.append("armed")

    with pytest.raises(DBAPIError):
        switch(mlf, ledger, name, v2, "deploy/r2/switch")
    assert armed == ["fired"]
    pg_cluster.start()
    assert promotion.registry_state(mlf, name)["champion"] == v1  # nothing moved after the lost answer
    retry = Ledger(ledger_url)
    assert retry.find("deploy/r2/switch") is not None  # the entry was committed after all
    assert retry.state(name)[1].get("champion") == v1  # ... as a pending intent, not as a move made
    assert {(d.alias, d.kind) for d in promotion.verify(mlf, retry, name)} >= {("champion", "pending")}

    done = switch(mlf, retry, name, v2, "deploy/r2/switch")
    assert done["action"] == "blue_green" and done["replayed"]
    assert_agree(mlf, retry, name, {"champion": v2, "canary": None, "shadow": None, "previous": v1})
    assert [e["action"] for e in retry.entries(name)] == ["cold_start", "blue_green"]  # recorded once
