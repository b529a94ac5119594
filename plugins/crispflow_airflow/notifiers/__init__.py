"""Notifiers: drift alert digests through Airflow's own notifiers (generic webhook, Slack webhook, email)."""
