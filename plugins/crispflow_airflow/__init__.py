"""crispflow's Airflow layer, shaped like a provider: hooks (I/O), operators (thin), sensors, triggers."""
