"""Executors: Airflow's LocalExecutor with crispflow's libraries preloaded in its worker processes."""
