"""The local stack tool: starts, checks and stops Airflow, MLflow and the model server, and runs the demo.

It sits above the lifecycle library, which never imports it; `main.py` is the command line.
"""
