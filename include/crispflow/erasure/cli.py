"""`crispflow erase plan|run|status|verify --pipeline P --key K`: answer a subject's erasure request.

Exit codes: 0 done (also a plan that finds nothing); 2 the caller's mistake (unknown pipeline, a key that is
empty, too long, of the wrong type or not in canonical form, `run` without `--yes` or without a ticket); 1 the
stores cannot be read, or `verify` found a problem. The key is never printed: the subject is named by its
pseudonym.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError

if TYPE_CHECKING:
    from crispflow.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    texts = {
        "plan": "list every file holding the subject (changes nothing)",
        "run": "erase the subject: successor versions, purged old ones, rewritten files, suppression, ledger",
        "status": "the erasure ledger's entries for the subject",
        "verify": "recompute the ledger's hash chain and scan the stores again (exit 1 on any problem)",
        "request": "trigger the erase_subject DAG (plan, human approval, erase) with the subject's pseudonyms only",
    }
    for name, text in texts.items():
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--pipeline", required=True, help="the pipeline (spec name) whose stores are searched")
        action.add_argument("--key", required=True, help="the subject's entity key, exactly as stored at the "
                                                         "source (no padding, no leading zeros for an integer key)")
        action.add_argument("--json", action="store_true", help="one JSON object, for scripts")
        if name in ("plan", "run", "request"):
            action.add_argument("--ticket", default="", help="the request's ticket (required by run and request)")
        if name in ("run", "request"):
            action.add_argument("--legal-basis", default="LGPD art. 18 VI / GDPR art. 17",
                                help="recorded in the ledger (default: %(default)s)")
        if name == "run":
            action.add_argument("--person", default="", help="who erases (default: the login name)")
            action.add_argument("--yes", action="store_true", help="erase: without it, only the plan is shown")


def run(args: argparse.Namespace, settings: Settings, stack_keys: str = "",
        trigger: Callable[[str, dict[str, Any]], str] | None = None) -> int:
    """`stack_keys`: the keys `crispflow up` generated for this home ($CRISPFLOW_PSEUDONYM_KEYS wins); `trigger`:
    (dag_id, conf) -> run_id, for `request`."""
    from crispflow.governance.pseudonyms import PseudonymError
    from crispflow.spec import SpecError

    try:
        context = _Context(args, settings, stack_keys)
        if args.action == "request":
            return _request(args, context, trigger)
        if args.action == "run" and not (args.yes and args.ticket.strip()):
            result = context.plan()
            _print(args, result.to_json(), _plan_lines(result))
            print("not erased: `erase run` needs --ticket and --yes", flush=True)
            return 2
        return {"plan": _plan, "run": _run, "status": _status, "verify": _verify}[args.action](args, context)
    except (PseudonymError, SpecError, ValueError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    except CrispflowError as exc:
        print(f"error: {exc}", flush=True)
        return 1


class _Context:
    """The spec, lake, keys, ledger and prediction log of one request."""

    def __init__(self, args: argparse.Namespace, settings: Settings, stack_keys: str) -> None:
        from upath import UPath

        from crispflow.erasure.plan import Subject
        from crispflow.governance.pseudonyms import KEYS_ENV, PseudonymError, keys_from_env, subject_key
        from crispflow.lake import Lake
        from crispflow.model.registry import model_name
        from crispflow.predictions.store import root_of
        from crispflow.spec import load_spec

        self.spec = load_spec(args.pipeline, settings)
        subject_key(args.key, self.spec.column(self.spec.key).type)  # the caller's mistakes first (exit 2)
        try:
            keys = keys_from_env(stack_keys)
        except PseudonymError as exc:  # the operator's configuration, not the caller's request: exit 1
            raise CrispflowError(str(exc)) from None
        if keys is None:
            raise CrispflowError(f"no pseudonym keys: set ${KEYS_ENV} (hk1:<base64url secret>) or run from the "
                                 "stack's home (`crispflow up` generates them)")
        self.keys, self.subject = keys, Subject.of_key(self.spec, args.key, keys)
        self.lake = Lake(UPath(settings.lake_url))
        self.predictions = root_of(settings.predictions_url) if settings.predictions_url else None
        self.model = model_name(self.spec.name)
        self.ledger_url = settings.ledger_url
        self.tracking_uri = settings.mlflow_tracking_uri

    def flag_models(self, datasets: set[str], holdouts: set[str], erasure_id: str) -> list[dict[str, str]]:
        from crispflow.erasure.models import flag
        from crispflow.model import registry

        if not self.tracking_uri:
            raise CrispflowError("no MLflow tracking URI: the model versions to flag cannot be found")
        return flag(registry.client(self.tracking_uri), self.model, datasets, holdouts, erasure_id,
                    self.spec.governance.erasure_deadline_days)

    def plan(self) -> Any:
        from crispflow.erasure.plan import plan

        return plan(self.lake, self.spec, self.subject, self.keys, self.predictions, self.model)

    def ledger(self) -> Any:
        from crispflow.governance.erasure_ledger import ErasureLedger

        return ErasureLedger(self.ledger_url)


def _print(args: argparse.Namespace, payload: dict[str, Any], lines: list[str]) -> None:
    print(json.dumps(payload, indent=2) if args.json else "\n".join(lines), flush=True)


def _plan_lines(result: Any) -> list[str]:
    lines = [f"subject {result.subject} in pipeline {result.pipeline}: {len(result.places)} of "
             f"{result.files_scanned} files"]
    lines += [f"  {p.store:<11} {p.rows:>6} row(s)  {p.form:<9}  {p.path}" for p in result.places]
    if not result.places:
        lines.append("  nowhere: no store of this pipeline holds the key (nothing to erase)")
    return lines


def _plan(args: argparse.Namespace, context: _Context) -> int:
    result = context.plan()
    _print(args, {**result.to_json(), "ticket": args.ticket}, _plan_lines(result))
    return 0


def _run(args: argparse.Namespace, context: _Context) -> int:
    from crispflow.erasure.run import Request, run

    request = Request(args.ticket, args.legal_basis, args.person or getpass.getuser())
    outcome = run(context.lake, context.spec, context.subject, context.keys, context.ledger(), request,
                  context.predictions, context.model, context.flag_models)
    lines = [f"erasure {outcome.erasure_id} of subject {outcome.plan.subject} in {outcome.plan.pipeline}: "
             f"{len(outcome.artifacts)} artifact(s) changed"]
    for a in outcome.artifacts:
        where = f"{a['version']} -> {a['successor']}" if a["store"] == "curated" else a["path"]
        lines.append(f"  {a['store']:<11} {where}  {a['old'][:12]} -> {a['new'][:12]}")
    lines += [f"  model       {m['model']} v{m['version']}: pending erasure, retrain or retire by {m['deadline']}"
              for m in outcome.models]
    _print(args, outcome.to_json(), lines)
    return 0


def _status(args: argparse.Namespace, context: _Context) -> int:
    from crispflow.erasure.run import ledger_name

    name = ledger_name(context.subject, context.keys)
    entries = [e for e in context.ledger().entries(context.spec.name) if e["subject"] == name]
    rows = [{k: e[k] for k in ("seq", "erasure_id", "at", "step", "ticket", "person", "legal_basis")}
            for e in entries]
    lines = [f"{len(rows)} ledger entr{'y' if len(rows) == 1 else 'ies'} for this subject in {context.spec.name}"]
    lines += [f"  #{r['seq']} {r['at'][:19]} {r['step']:<5} {r['erasure_id']} ticket {r['ticket']} by "
              f"{r['person']}" for r in rows]
    _print(args, {"pipeline": context.spec.name, "entries": rows}, lines)
    return 0


def _request(args: argparse.Namespace, context: _Context, trigger: Callable[[str, dict[str, Any]], str] | None) -> int:
    if not args.ticket.strip():
        print("error: ticket: `erase request` needs --ticket", flush=True)
        return 2
    if trigger is None:
        raise CrispflowError("no Airflow to trigger the erase_subject DAG")
    conf = {"pipeline": context.spec.name, "subject": list(context.subject.names), "ticket": args.ticket,
            "legal_basis": args.legal_basis}
    run_id = trigger("erase_subject", conf)
    _print(args, {"dag_id": "erase_subject", "run_id": run_id, "subject": context.subject.names[0]},
           [f"erase_subject run {run_id} for subject {context.subject.names[0]}: approve it in the Airflow UI "
            "(Browse > Required Actions)"])
    return 0


def _verify(args: argparse.Namespace, context: _Context) -> int:
    from crispflow.erasure.run import verify

    problems = verify(context.lake, context.spec, context.subject, context.keys, context.ledger(), context.predictions,
                      context.model)
    lines = [f"problem: {p}" for p in problems] or ["verified: the ledger's chain holds and no store holds the "
                                                    "subject"]
    _print(args, {"pipeline": context.spec.name, "ok": not problems, "problems": problems}, lines)
    return 1 if problems else 0
