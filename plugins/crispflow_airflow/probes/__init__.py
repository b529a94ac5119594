"""Scripts `crispflow validate` runs in fresh processes: they import Airflow, the library never does."""
