"""The AirflowPlugin. Operators, hooks and sensors are imported from `crispflow_airflow` (Airflow 3 plugins do
not register them); this registers what must be registered: the timetables, links and UI views that later
milestones add (model registry, promotion ledger, drift views)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class CrispflowPlugin(AirflowPlugin):
    name = "crispflow"
