"""The crispflow pages inside the Airflow web UI: a FastAPI app mounted by the plugin at `/crispflow`, shown
through `external_views`. Importing this package is cheap; `app.create_app` builds the app (on first request)."""
