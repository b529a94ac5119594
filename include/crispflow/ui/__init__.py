"""What the Airflow UI plugin's pages show, as plain dicts and SVG, read from the lake, the prediction-log store, the
promotion ledger and MLflow. No Airflow here: `plugins/crispflow_airflow/ui` renders these."""

from __future__ import annotations

from crispflow.errors import CrispflowError


class NotFound(CrispflowError):
    """A page or file that does not exist, or a path parameter that is not a valid name (never a traversal)."""
