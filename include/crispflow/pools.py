"""The Airflow pools crispflow's DAGs use: `crispflow up` and compose's airflow-init create them all (a task in a
pool that does not exist waits in "scheduled" forever)."""

from __future__ import annotations

PROMOTIONS = "crispflow_promotions"

POOLS = ((PROMOTIONS, 1, "serialises model promotions (alias moves)"),)
