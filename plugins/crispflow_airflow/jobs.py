"""What tasks hand to the library, resolved from hooks and settings: the training job of a run (for
crispflow.model.modelling) and the release clients (for crispflow.release)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context
    from mlflow import MlflowClient

    from crispflow.model.modelling import TrainingJob
    from crispflow.release.promotion import Ledger


def training_job(request: dict[str, Any], context: Context) -> TrainingJob:
    """The `TrainingJob` of a training run: the request's spec, the lake, the MLflow client and the run key
    (`<dag_id>/<run_id>`, shared by every task of the run so a retry finds what the first try made)."""
    from crispflow.model.modelling import TrainingJob
    from crispflow.spec import load_spec
    from crispflow_airflow.hooks.lake import LakeHook
    from crispflow_airflow.hooks.mlflow import MlflowHook

    ti = context["ti"]
    return TrainingJob(load_spec(request["pipeline"]), LakeHook().get_lake(), MlflowHook().get_client(),
                       request["dataset_version_id"], f"{ti.dag_id}/{ti.run_id}")


def release_clients(pipeline: str) -> tuple[MlflowClient, Ledger, str]:
    """The MLflow client (MlflowHook), the promotion ledger (`Settings.ledger_url`) and the registered model name."""
    from crispflow.model.registry import model_name
    from crispflow.release.promotion import Ledger
    from crispflow.settings import Settings
    from crispflow_airflow.hooks.mlflow import MlflowHook

    return MlflowHook().get_client(), Ledger(Settings.from_env().ledger_url), model_name(pipeline)
