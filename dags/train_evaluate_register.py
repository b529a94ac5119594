"""Model phases of CRISP-ML(Q): frozen holdout → tuned candidates (one mapped task each) → calibrated challenger
registered in MLflow → holdout evaluation with confidence intervals, and explanations → blessing gate → champion on
cold start.

Runs once per published curated dataset version: `crispflow_curated_dataset` events are partitioned by
`<pipeline>/<dataset_version_id>` and this DAG is scheduled with a `PartitionedAssetTimetable`, so the scheduler
creates one run per key — several pipelines publishing in the same second get one training run each, and a run
never sees another pipeline's event (the `resolve` task checks that every event matches the run's key). Runs wait
for each other (`max_active_runs`), none is dropped. Or by hand / REST with `pipeline` and `dataset_version_id`.
Every step is idempotent per run: retries find what they made.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, PartitionedAssetTimetable, dag, task

from crispflow_airflow.assets import CURATED_DATASET
from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.operators.blessing import BlessingGateOperator
from crispflow_airflow.operators.promotion import DeployCanaryOperator
from crispflow_airflow.operators.training import RegisterChallengerOperator

PARAMS = {
    "pipeline": pipeline_param("Pipeline spec name; empty: from the triggering dataset event", default=None),
    "dataset_version_id": Param(None, type=["null", "string"], pattern=r"^ds-[0-9a-f]{16}$",
                                description="Curated dataset version to train on (ds-...)"),
    "search_budget": Param(None, type=["null", "integer"], minimum=1, maximum=200,
                           description="Configurations to cross-validate (default: the spec's)"),
    "force_bless": Param(False, type="boolean",
                         description="If the gate does not bless the model, ask a human to approve it anyway"),
    "force_reason": Param("", type="string", maxLength=500, description="Why (required with force_bless)"),
    "deploy_strategy": Param("canary", enum=["canary", "shadow", "blue_green", "none"],
                             description="How a blessed model that is not the first goes live"),
    "traffic_share": Param(0.2, type="number", exclusiveMinimum=0, maximum=1,
                           description="Canary: share of entities; shadow: share of requests mirrored"),
}


@dag(
    schedule=PartitionedAssetTimetable(assets=CURATED_DATASET),  # one run per `<pipeline>/<version>` key
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "model"],
    params=PARAMS,
    default_args=default_args(execution_timeout=timedelta(hours=1)),
    doc_md=__doc__,
)
def train_evaluate_register() -> None:
    @task
    def resolve(**context) -> dict:
        """Validate the request (conf, or the triggering asset events of this run's partition key, newest first);
        skip datasets too small to train (the reason becomes the run's note: `crispflow_airflow.run_notes`)."""
        from crispflow.run_requests import check_partition, choose_training_request, published_rows
        from crispflow.spec import load_spec
        from crispflow_airflow.context import triggering_events
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.hooks.lake import LakeHook
        from crispflow_airflow.run_notes import skip

        with as_airflow_errors():
            events = triggering_events(context)
            check_partition(context["dag_run"].partition_key, events, "dataset_version_id")
            lake = LakeHook().get_lake()
            chosen = choose_training_request(context["params"], events,
                                             lambda pipeline, version: published_rows(load_spec(pipeline), lake,
                                                                                      version))
            if isinstance(chosen, str):
                skip(context, chosen)
            check_partition(context["dag_run"].partition_key, [chosen], "dataset_version_id")  # a keyed REST run
        return chosen

    @task(multiple_outputs=True)
    def prepare(request: dict, **context) -> dict:
        """Freeze (or reuse) the holdout and open the MLflow parent run."""
        from crispflow.model.modelling import prepare as run
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.jobs import training_job

        with as_airflow_errors():
            return run(training_job(request, context))

    @task
    def plan(request: dict) -> list[dict]:
        """The configurations to cross-validate: one mapped task each."""
        from crispflow.model.training import plan_search
        from crispflow.spec import load_spec
        from crispflow_airflow.exceptions import as_airflow_errors

        with as_airflow_errors():
            return plan_search(load_spec(request["pipeline"]), request["search_budget"])

    @task(max_active_tis_per_dagrun=4)
    def cross_validate(request: dict, parent_run_id: str, config: dict, **context) -> dict:
        """One candidate configuration, k-fold cross-validated, in its own nested MLflow run."""
        from crispflow.model.modelling import run_candidate
        from crispflow_airflow.jobs import training_job

        return run_candidate(training_job(request, context), parent_run_id, config)

    @task
    def evaluate(request: dict, version: str, **context) -> dict:
        """Holdout metrics with bootstrap CIs, slices, latency, size and plots, logged to MLflow (the `mlflow`
        reference is for the task's MLflow links)."""
        from crispflow.model.modelling import evaluate_version
        from crispflow_airflow.jobs import training_job
        from crispflow_airflow.links import mlflow_ref

        job = training_job(request, context)
        return {**evaluate_version(job, version), "mlflow": mlflow_ref(job.mlf, job.model_name, version)}

    @task
    def explain(request: dict, version: str, **context) -> dict:
        """Global explanation on the holdout (permutation importance with CIs, mean |contribution|, partial
        dependence) and the local explainer's record the model server checks and builds, logged before the gate."""
        from crispflow.model.modelling import explain_version
        from crispflow_airflow.jobs import training_job
        from crispflow_airflow.links import mlflow_ref

        job = training_job(request, context)
        return {**explain_version(job, version), "mlflow": mlflow_ref(job.mlf, job.model_name, version)}

    @task.short_circuit(ignore_downstream_trigger_rules=False)  # skip the approval only, not `deploy`
    def needs_approval(request: dict, verdict: dict) -> bool:
        """Only a forced request for a model the gate did not bless goes to a human."""
        return bool(request.get("force_bless")) and not verdict["blessed"]

    @task
    def record_forced_blessing(request: dict, version: str, **context) -> dict:
        """Record the approved override (requester, approver, time, reason, the gate's reasons) beside the verdict;
        refused (not retried) when the approver is the requester. A first model then becomes champion, as a
        blessed one would, recorded for the approver."""
        from crispflow.model.modelling import force_bless
        from crispflow.release.promotion import promote_first_blessed
        from crispflow_airflow.context import acting_person
        from crispflow_airflow.exceptions import as_airflow_errors
        from crispflow_airflow.jobs import release_clients, training_job

        approval = context["ti"].xcom_pull(task_ids="approve_forced_blessing") or {}
        approver = approval.get("responded_by_user") or {}
        with as_airflow_errors():
            job = training_job(request, context)
            force_bless(job, version, reason=request["force_reason"], approver=approver,
                        requester=acting_person(context))
            _, ledger, _ = release_clients(job.spec.name)
            return promote_first_blessed(job.mlf, ledger, job.model_name, version, run_key=job.run_key,
                                         person=str(approver.get("name") or approver.get("id")))

    request = resolve()
    prepared = prepare(request)
    results = cross_validate.partial(request=request, parent_run_id=prepared["parent_run_id"]).expand(
        config=plan(request))
    # an operator (not @task) so that it reports OpenLineage: dataset version → registered model version
    registered = RegisterChallengerOperator(task_id="register", request=request,
                                            parent_run_id=prepared["parent_run_id"], results=results).output
    evaluated = evaluate(request, registered["version"])
    bless = BlessingGateOperator(task_id="bless", request=request, version=registered["version"])
    explained = explain(request, registered["version"])
    [evaluated, explained] >> bless
    approve = ApprovalOperator(
        task_id="approve_forced_blessing",
        subject="Force-bless {{ ti.xcom_pull(task_ids='bless')['version'] }} of "
        "{{ ti.xcom_pull(task_ids='resolve')['pipeline'] }}?",
        body="Requested reason: {{ ti.xcom_pull(task_ids='resolve')['force_reason'] }}\n"
        "The gate said no because: {{ ti.xcom_pull(task_ids='bless')['reasons'] }}",
        response_timeout=timedelta(hours=6),
        execution_timeout=timedelta(hours=6),
    )
    forced = record_forced_blessing(request, registered["version"])
    needs_approval(request, bless.output) >> approve >> forced
    deploy = DeployCanaryOperator(
        task_id="deploy",
        pipeline="{{ ti.xcom_pull(task_ids='resolve')['pipeline'] }}",
        version=registered["version"],
        strategy="{{ params.deploy_strategy }}",
        share="{{ params.traffic_share }}",
        reason="blessed by the gate in {{ dag_run.run_id }}",
        trigger_rule="none_failed_min_one_success",  # after the gate, and after a forced blessing if asked for
    )
    [bless, forced] >> deploy


train_evaluate_register()
