"""crispflow: the CRISP-ML(Q) lifecycle for tabular models. This package never imports Airflow."""

from __future__ import annotations

__version__ = "0.1.0"
