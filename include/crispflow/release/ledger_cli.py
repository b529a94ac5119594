"""`crispflow ledger verify [--pipeline P] [--json]`: does the promotion ledger agree with the registry?

For each pipeline (all shipped specs by default) the confirmed ledger state is compared with the serving aliases
MLflow holds (`crispflow.release.promotion.verify`): a pending intent (a move not yet confirmed) or an alias moved
in MLflow directly is a divergence. Read-only: nothing is recorded or moved. Exit codes: 0 agree, 1 divergence,
2 the registry or the ledger could not be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crispflow.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ledger_command", required=True, metavar="SUBCOMMAND")
    verify = sub.add_parser("verify", help="compare the ledger with the registry (exit 1 on divergence)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("--pipeline", action="append", metavar="P",
                        help="pipeline spec name (repeatable; default: every shipped spec)")
    verify.add_argument("--json", action="store_true", help="one JSON object, for scripts")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from crispflow.model import registry
    from crispflow.release.promotion import Ledger
    from crispflow.spec import list_specs

    pipelines = args.pipeline or list_specs(settings)
    try:
        mlf = registry.client(settings.mlflow_tracking_uri)
        ledger = Ledger(settings.ledger_url)
        report = verify_pipelines(mlf, ledger, pipelines)
    except Exception as exc:  # unreachable registry or ledger: neither "agree" nor "diverged"
        print(f"error: cannot verify the ledger ({type(exc).__name__}: {_first_line(exc)})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["agree"] else 1


def verify_pipelines(mlf: Any, ledger: Any, pipelines: list[str]) -> dict[str, Any]:
    """{"agree": bool, "pipelines": {pipeline: {"model", "agree", "divergences": [...]}}}."""
    from crispflow.model.registry import model_name
    from crispflow.release.promotion import verify

    out: dict[str, Any] = {}
    for pipeline in pipelines:
        found = verify(mlf, ledger, model_name(pipeline))
        out[pipeline] = {"model": model_name(pipeline), "agree": not found,
                         "divergences": [{**dataclasses.asdict(d), "message": str(d)} for d in found]}
    return {"agree": all(p["agree"] for p in out.values()), "pipelines": out}


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for pipeline, result in report["pipelines"].items():
        if result["agree"]:
            lines.append(f"{pipeline}: ledger and registry agree")
        else:
            lines.append(f"{pipeline}: DIVERGED")
            lines.extend(f"  {d['kind']}: {d['message']}" for d in result["divergences"])
    lines.append("ok: the ledger agrees with the registry" if report["agree"] else
                 "divergence: a pending move is completed by the next promotion task (or any canary analysis "
                 "run); an outside move is recorded by the next canary analysis or drift watch")
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    """The error's first line, cut short, without any `user:password@` of a URL in it."""
    import re

    return re.sub(r"://[^/@\s]+@", "://***@", (str(exc).splitlines() or [""])[0])[:300]
