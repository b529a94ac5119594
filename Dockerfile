# crispflow's image: Airflow 3.3.2 with crispflow's locked dependencies and its packages, DAGs and plugins.
# docker-compose.yaml runs every Airflow component and the MLflow server from it.
FROM apache/airflow:3.3.2-python3.11

# The official image's conventions: packages are installed as the `airflow` user (uid 50000, group 0),
# AIRFLOW_HOME is /opt/airflow and the image's entrypoint runs `airflow <command>`.
USER airflow
WORKDIR /opt/airflow

# 1. Third-party dependencies, exactly as locked (the same file CI installs). The lock pins apache-airflow
#    3.3.2 as well, i.e. the base image's Airflow, which pip therefore leaves in place; the check makes a
#    mismatch fail the build. Its own layer: rebuilt only when requirements.lock changes.
COPY --chown=airflow:0 requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir -r /tmp/requirements.lock \
    && python -c "import os, airflow; assert airflow.__version__ == os.environ['AIRFLOW_VERSION'], airflow.__version__"

# 2. crispflow itself, without dependencies (all installed above), so `crispflow` and `crispflow_airflow`
#    import from anywhere. The sources stay in /opt/airflow: the DAG and plugin folders, and include/ for the
#    pipeline specs and demo data (CRISPFLOW_PROJECT_ROOT is where spec paths are resolved).
COPY --chown=airflow:0 pyproject.toml README.md ./
COPY --chown=airflow:0 include/ include/
COPY --chown=airflow:0 plugins/ plugins/
COPY --chown=airflow:0 dags/ dags/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info include/*.egg-info plugins/*.egg-info \
    && python -c "import crispflow, crispflow_airflow"

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins \
    CRISPFLOW_PROJECT_ROOT=/opt/airflow
