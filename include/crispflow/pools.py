"""The Airflow pools crispflow's DAGs use: `crispflow up` and compose's airflow-init create them all (a task in a
pool that does not exist waits in "scheduled" forever)."""

from __future__ import annotations

PROMOTIONS = "crispflow_promotions"
# Airflow links an asset to an alias when a task first emits through the alias; two tasks doing it at the same
# moment make the second link a duplicate key, and Airflow fails that task although its work succeeded.
ALIAS_EVENTS = "crispflow_alias_events"

POOLS = (
    (PROMOTIONS, 1, "serialises model promotions (alias moves)"),
    (ALIAS_EVENTS, 1, "serialises tasks that emit through an asset alias (publish, commit)"),
)
