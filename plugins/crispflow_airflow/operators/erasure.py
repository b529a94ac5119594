"""Erasure operators: plan an erasure (what a person approves), then run and verify it (crispflow.erasure).

Both take the subject as its entity pseudonyms (one per key, current first), never the raw key: the CLI computes
them locally (`crispflow erase request`), so a key never lands in `dag_run.conf`, XCom or a task log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.assets import ERASURE, emit_once
from crispflow_airflow.exceptions import as_airflow_errors

if TYPE_CHECKING:
    from airflow.sdk import Context


class _ErasureOperator(BaseOperator):
    template_fields: Sequence[str] = ("pipeline", "subject", "ticket")
    ui_color = "#fce4ec"

    def __init__(self, *, pipeline: str, subject: Any, ticket: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.subject = subject
        self.ticket = ticket

    def _parts(self) -> tuple[Any, ...]:
        """(spec, lake, keys, subject, prediction store root, registered model name, MLflow client)."""
        from crispflow.erasure.plan import Subject
        from crispflow.model.registry import model_name
        from crispflow.spec import load_spec
        from crispflow_airflow.hooks.lake import LakeHook
        from crispflow_airflow.hooks.mlflow import MlflowHook
        from crispflow_airflow.hooks.predictions import PredictionStoreHook
        from crispflow_airflow.hooks.pseudonyms import PseudonymHook

        spec, keys = load_spec(self.pipeline), PseudonymHook().get_pseudonymizer()
        names = self.subject.split(",") if isinstance(self.subject, str) else list(self.subject)
        subject = Subject.of_pseudonyms([n.strip() for n in names if n.strip()], keys)
        return (spec, LakeHook().get_lake(), keys, subject, PredictionStoreHook().get_root(), model_name(spec.name),
                MlflowHook().get_client())


class PlanErasureOperator(_ErasureOperator):
    """Where the subject is and which model versions would be flagged; changes nothing. Returns the plan (paths,
    stores, row counts, the subject's pseudonym) for the approval step."""

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.erasure.models import at_stake
        from crispflow.erasure.plan import plan

        with as_airflow_errors():
            spec, lake, keys, subject, root, model, mlf = self._parts()
            found = plan(lake, spec, subject, keys, root, model)
            versions = at_stake(mlf, model, lake, spec.name, set(found.dataset_versions), found.holdouts)
        stores: dict[str, int] = {}
        for place in found.places:
            stores[place.store] = stores.get(place.store, 0) + place.rows
        self.log.info("erasure plan in %s (ticket %s): %d of %d files hold the subject", spec.name, self.ticket,
                      len(found.places), found.files_scanned)  # the pseudonym stays out of logs
        return {**found.to_json(), "ticket": self.ticket, "rows_by_store": stores,
                "model_versions": [str(v.version) for v in versions]}


class EraseSubjectOperator(_ErasureOperator):
    """Erase the subject (`crispflow.erasure.run`: successors, purge, rewrites, suppression list, model versions
    flagged, ledger entries), then verify it (chain and a fresh scan); a problem fails the task. Safe to rerun:
    a rerun continues what a crash left. When model versions were flagged, emits `crispflow_erasure` (key
    `<pipeline>/<erasure_id>`) for retrain_after_erasure.

    :param legal_basis: recorded in the erasure ledger
    :param person: who approved it (recorded in the ledger); `requested_by`: who asked
    """

    template_fields: Sequence[str] = (*_ErasureOperator.template_fields, "legal_basis", "person", "requested_by")

    def __init__(self, *, legal_basis: str, person: str, requested_by: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [ERASURE])
        super().__init__(**kwargs)
        self.legal_basis = legal_basis
        self.person = person
        self.requested_by = requested_by

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.erasure.models import flag
        from crispflow.erasure.run import Request, run, verify
        from crispflow.errors import CrispflowError
        from crispflow.governance.erasure_ledger import ErasureLedger
        from crispflow.settings import Settings

        with as_airflow_errors():
            spec, lake, keys, subject, root, model, mlf = self._parts()
            ledger = ErasureLedger(Settings.from_env().ledger_url)
            request = Request(self.ticket, self.legal_basis, self.person, self.requested_by)
            outcome = run(lake, spec, subject, keys, ledger, request, root, model,
                          lambda datasets, holdouts, erasure_id: flag(
                              mlf, model, datasets, holdouts, erasure_id, spec.governance.erasure_deadline_days))
            if problems := verify(lake, spec, subject, keys, ledger, root, model):
                raise CrispflowError(f"erasure {outcome.erasure_id} did not verify: {'; '.join(problems)}")
        self.log.info("erasure %s of %s: %d artifacts changed, %d model versions flagged, verified",
                      outcome.erasure_id, spec.name, len(outcome.artifacts), len(outcome.models))
        ti = context["ti"]  # an event only when this run flagged model versions (a rerun that found nothing: none)
        made_by = {"dag_id": ti.dag_id, "run_id": ti.run_id} if outcome.models else {}
        extra = {"pipeline": spec.name, "erasure_id": outcome.erasure_id,
                 "models": [m["version"] for m in outcome.models]}
        emitted = emit_once(context, made_by, extra, asset=ERASURE, pipeline=spec.name, item=outcome.erasure_id)
        return {"pipeline": spec.name, **outcome.to_json(), "event_emitted": emitted}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: each rewritten lake object as an OVERWRITE, each purged version as a DROP and its successor
        as a CREATE (`crispflow_airflow.lineage.erasure`)."""
        from crispflow_airflow import lineage

        return lineage.facets(task_instance, lambda result, lake, _: lineage.erasure(result, lake))
