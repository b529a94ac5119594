"""Governance: erase one subject from a pipeline's stores, after a person approves the plan (LGPD art. 18, GDPR
art. 17).

The subject comes as its entity pseudonyms (one per pseudonym key, current first), never as the raw key:
`crispflow erase request --pipeline P --key K --ticket T` computes them where the key is typed and triggers this
DAG, so no key lands in `dag_run.conf`, XCom or a log. `plan` lists every file holding the subject and the model
versions that would be flagged; `approve` (Airflow HITL) shows that impact and waits for a person; `erase` writes
successor versions, purges the old ones to tombstones, rewrites raw, staged, quarantined, scored and logged files
without the subject, puts them on the suppression list, flags the model versions, records it all in the
hash-chained erasure ledger with the approver, and verifies (chain + a fresh scan). Safe to rerun.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag

from crispflow_airflow.dag_defaults import START_DATE, default_args, pipeline_param
from crispflow_airflow.operators.erasure import EraseSubjectOperator, PlanErasureOperator

PLAN = "ti.xcom_pull(task_ids='plan')"  # the plan's impact, as a person reads it in the approval
SUBJECT = "{{ params.subject | join(',') }}"


@dag(
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["crispflow", "governance"],
    params={
        "pipeline": pipeline_param("Pipeline whose stores hold the subject"),
        "subject": Param([], type="array", minItems=1, maxItems=8,
                         items={"type": "string", "pattern": r"^hk[1-9][0-9]{0,5}:[0-9a-f]{32}$"},
                         description="The subject's entity pseudonyms, one per key, current first (from "
                                     "`crispflow erase request`; never the raw key)"),
        "ticket": Param("", type="string", minLength=1, maxLength=250, description="The request's ticket"),
        "legal_basis": Param("LGPD art. 18 VI / GDPR art. 17", type="string", minLength=1, maxLength=250,
                             description="Recorded in the erasure ledger"),
    },
    default_args=default_args(execution_timeout=timedelta(hours=1)),
    doc_md=__doc__,
)
def erase_subject() -> None:
    plan = PlanErasureOperator(task_id="plan", pipeline="{{ params.pipeline }}", subject=SUBJECT,
                               ticket="{{ params.ticket }}")
    approve = ApprovalOperator(
        task_id="approve",
        subject="Erase the subject of ticket {{ params.ticket }} from {{ params.pipeline }}?",  # no pseudonym: logs
        body="{% set p = " + PLAN + " %}{{ p['places'] | length }} of {{ p['files_scanned'] }} files hold the "
        "subject.\n\n"
        "- Rows by store: {% for store, rows in p['rows_by_store'].items() %}{{ store }} {{ rows }}"
        "{{ ', ' if not loop.last }}{% else %}none{% endfor %}\n"
        "- Dataset versions to supersede: {{ p['dataset_versions'] | join(', ') or 'none' }}\n"
        "- Model versions to flag (retrain or retire): {% for v in p['model_versions'] %}v{{ v }}"
        "{{ ', ' if not loop.last }}{% else %}none{% endfor %}\n"
        "- Requested by {{ dag_run.triggering_user_name or 'unknown' }}; legal basis: {{ params.legal_basis }}",
        response_timeout=timedelta(hours=6),  # unanswered: the run fails; trigger it again to ask again
        execution_timeout=timedelta(hours=6),
    )
    erase = EraseSubjectOperator(
        task_id="erase", pipeline="{{ params.pipeline }}", subject=SUBJECT, ticket="{{ params.ticket }}",
        legal_basis="{{ params.legal_basis }}",
        person="{{ (ti.xcom_pull(task_ids='approve')['responded_by_user'] or {}).get('name', '') }}",
        requested_by="{{ dag_run.triggering_user_name or '' }}",
    )
    plan >> approve >> erase


erase_subject()
