"""`crispflow erase plan --pipeline P --key K`: where a subject is. Exit 0 with the plan (also when the subject is
nowhere), 2 when the request is the caller's mistake (unknown pipeline, a key that is empty, too long, of the
wrong type or not in canonical form), 1 when the stores cannot be read. The key is never printed."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError

if TYPE_CHECKING:
    from crispflow.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    plan = actions.add_parser("plan", help="list every file holding the subject (changes nothing)")
    plan.add_argument("--pipeline", required=True, help="the pipeline (spec name) whose stores are searched")
    plan.add_argument("--key", required=True, help="the subject's entity key, exactly as stored at the source "
                                                   "(no padding, no leading zeros for an integer key)")
    plan.add_argument("--ticket", default="", help="the request's ticket (recorded with the plan)")
    plan.add_argument("--json", action="store_true", help="one JSON object, for scripts")


def run(args: argparse.Namespace, settings: Settings, stack_keys: str = "") -> int:
    """`stack_keys`: the keys `crispflow up` generated for this home ($CRISPFLOW_PSEUDONYM_KEYS wins)."""
    from crispflow.governance.pseudonyms import PseudonymError
    from crispflow.spec import SpecError

    try:
        result = _plan(args, settings, stack_keys)
    except (PseudonymError, SpecError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    except CrispflowError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    if args.json:
        print(json.dumps({**result.to_json(), "ticket": args.ticket}, indent=2))
        return 0
    print(f"subject {result.subject} in pipeline {result.pipeline}: {len(result.places)} of "
          f"{result.files_scanned} files")
    for place in result.places:
        print(f"  {place.store:<11} {place.rows:>6} row(s)  {place.form:<9}  {place.path}")
    if not result.places:
        print("  nowhere: no store of this pipeline holds the key (nothing to erase)")
    return 0


def _plan(args: argparse.Namespace, settings: Settings, stack_keys: str) -> Any:
    from upath import UPath

    from crispflow.erasure.plan import plan
    from crispflow.governance.pseudonyms import KEYS_ENV, PseudonymError, keys_from_env
    from crispflow.lake import Lake
    from crispflow.model.registry import model_name
    from crispflow.predictions.store import root_of
    from crispflow.spec import load_spec

    spec = load_spec(args.pipeline, settings)
    try:
        keys = keys_from_env(stack_keys)
    except PseudonymError as exc:  # the operator's configuration, not the caller's request: exit 1
        raise CrispflowError(str(exc)) from None
    if keys is None:
        raise CrispflowError(f"no pseudonym keys: set ${KEYS_ENV} (hk1:<base64url secret>) or run from the stack's "
                             "home (`crispflow up` generates them)")
    predictions = root_of(settings.predictions_url) if settings.predictions_url else None
    return plan(Lake(UPath(settings.lake_url)), spec, args.key, keys, predictions, model_name(spec.name))

