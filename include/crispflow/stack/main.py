"""`crispflow up | down | status | demo | serve | drift | erase`: the stack tool's one command line (a console
script)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from crispflow.errors import CrispflowError
from crispflow.settings import Settings
from crispflow.stack.paths import private_umask
from crispflow.stack.processes import STOP_TIMEOUT
from crispflow.stack.profiles import DEFAULT_PROFILE, PROFILES


def _echo(message: str) -> None:
    print(message, flush=True)


def _show(args: argparse.Namespace) -> bool | None:
    """--show-secrets: True; else None (printed on a terminal only, never when $CI is set: control.secrets_visible)."""
    return True if getattr(args, "show_secrets", False) else None


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the stack (or find it running) and print where everything is."""
    from crispflow.stack import control as stack

    status = stack.up(settings, args.profile, timeout=args.timeout, echo=_echo)
    print(stack.format_status(status, _show(args)))
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    """Stop exactly what `up` started; exit 0 when nothing is running."""
    from crispflow.stack import control as stack

    lines = stack.down(settings, timeout=args.timeout)
    print("\n".join(lines) if lines else "nothing to stop")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print the stack's state; exit 0 only if every process is healthy."""
    from crispflow.stack import control as stack

    status = stack.collect_status(settings)
    show = _show(args)
    print(json.dumps(status.to_dict(show), indent=2) if args.json else stack.format_status(status, show))
    return 0 if status.healthy else 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """`up`, then the end-to-end demo against the running stack, which is left running."""
    from crispflow.stack import control as stack
    from crispflow.stack.airflow_api import AirflowAPI
    from crispflow.stack.demo import run_demo

    started = time.monotonic()
    cmd_up(args, settings)
    up_seconds = time.monotonic() - started
    if args.profile != DEFAULT_PROFILE:  # the demo talks to that profile's lake, MLflow and model server
        settings = profile_client_settings(args.profile, settings)
    print(f"\nthe stack is up ({up_seconds:.0f} s); running the demo: each phase, DAG run and state is shown as it "
          "goes, with the time since the demo started", flush=True)
    try:
        summary = run_demo(AirflowAPI.from_settings(settings), settings, args.pipeline)
        summary["time per phase"] = {"crispflow up": f"{up_seconds:.0f} s", **summary.get("time per phase", {})}
    except Exception:  # the demo's own failure: show it, keep the stack up for inspection
        traceback.print_exc()
        print("\ndemo FAILED; the stack is still running for inspection:", file=sys.stderr)
        print(stack.format_access(stack.collect_status(settings), _show(args)), file=sys.stderr)
        return 1
    print("\ndemo summary")
    print(format_mapping(summary or {}, indent=2))
    print()
    print(stack.format_access(stack.collect_status(settings), _show(args)))
    print("\nThe stack keeps running: `crispflow status`, `crispflow down`.")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the model server in the foreground (`crispflow up` starts it as a managed process)."""
    from crispflow.serving.cli import run

    return run(args, settings)


def cmd_drift(args: argparse.Namespace, settings: Settings) -> int:
    """Compare a current data file with a reference profile or file; exit 0 no drift, 1 drift, 2 bad input."""
    from crispflow.monitoring.cli import run

    return run(args, settings)


def cmd_ledger(args: argparse.Namespace, settings: Settings) -> int:
    """`crispflow ledger verify`: exit 0 when the promotion ledger agrees with the registry, 1 on divergence."""
    from crispflow.release.ledger_cli import run

    return run(args, settings)


def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    """`crispflow erase plan|run|status|verify|request`: a subject's erasure request (crispflow.erasure.cli);
    `request` triggers the erase_subject DAG through the stack's REST API."""
    from crispflow.erasure.cli import run
    from crispflow.stack.airflow_api import AirflowAPI
    from crispflow.stack.credentials import load_secrets

    creds = load_secrets(settings.home)
    return run(args, settings, creds.pseudonym_keys if creds is not None else "",
               lambda dag_id, conf: AirflowAPI.from_settings(settings).trigger(dag_id, conf))


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Check every spec, DAG file and the plugin's import cost; exit 0 when all pass, 1 with a line per problem."""
    import time
    from pathlib import Path

    from crispflow.stack.validate import PARTS, validate

    root = settings.project_root
    started = time.perf_counter()
    report = validate(Path(args.pipelines) if args.pipelines else settings.pipelines_dir,
                      Path(args.dags) if args.dags else root / "dags",
                      Path(args.plugins) if args.plugins else root / "plugins",
                      parts=args.only or PARTS, max_parse_seconds=args.max_parse_seconds,
                      max_plugin_import_ms=args.max_plugin_import_ms)
    for problem in report.problems:
        print(problem)
    print(f"{report.summary()} ({time.perf_counter() - started:.1f} s)")
    return 0 if report.ok else 1


def profile_client_settings(profile: str, settings: Settings) -> Settings:
    """Settings as a client of a running non-default profile sees them (its S3 lake, MLflow credentials)."""
    import os

    from crispflow.stack.credentials import load_secrets
    from crispflow.stack.ports import resolve_ports
    from crispflow.stack.prod_local import PROD_LOCAL, client_env

    creds = load_secrets(settings.home)
    if profile == PROD_LOCAL and creds is not None:
        os.environ.update(client_env(settings, resolve_ports(settings.home), creds))
    return Settings.from_env()


def format_mapping(data: Mapping[str, Any], indent: int = 0) -> str:
    """`key: value` lines; nested mappings indented under their key."""
    pad = " " * indent
    lines = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{key}:")
            lines.append(format_mapping(value, indent + 2))
        elif isinstance(value, list | tuple):
            lines.append(f"{pad}{key}: {', '.join(map(str, value))}")
        else:
            lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only`, the options of that command alone (the others' imports are not paid)."""
    parser = argparse.ArgumentParser(prog="crispflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, tuple[Callable[..., int], str]] = {
        "up": (cmd_up, "start the local stack (idempotent)"),
        "down": (cmd_down, "stop what `up` started"),
        "status": (cmd_status, "show processes, URLs, login and paths"),
        "demo": (cmd_demo, "start the stack and run the demo pipeline"),
        "serve": (cmd_serve, "run the model server (MLflow aliases champion/canary/shadow)"),
        "drift": (cmd_drift, "drift of a data file against a reference"),
        "ledger": (cmd_ledger, "check the promotion ledger against the registry (`ledger verify`)"),
        "erase": (cmd_erase, "a subject's erasure request: plan, run, status, verify, request (the erase_subject DAG)"),
        "validate": (cmd_validate, "check every spec, DAG file parse and the plugin's import cost (for CI)"),
    }
    for name, (func, text) in commands.items():
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.set_defaults(func=func)
        if only is not None and name != only:
            continue
        if name in ("up", "demo"):
            from crispflow.stack.control import UP_TIMEOUT

            cmd.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
            cmd.add_argument("--timeout", type=float, default=UP_TIMEOUT, help="seconds to become healthy")
        if name == "demo":
            cmd.add_argument("--pipeline", default="lending_club", help="the shipped spec whose story runs: "
                             "lending_club (binary), lending_club_rate (regression), lending_club_verification "
                             "(multiclass)")
        if name == "down":
            cmd.add_argument("--timeout", type=float, default=STOP_TIMEOUT, help="seconds before SIGKILL")
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="one JSON object, for scripts")
        if name in ("up", "demo", "status"):
            cmd.add_argument("--show-secrets", action="store_true",
                             help="print the admin password and the model server tokens even when stdout is not a "
                                  "terminal or $CI is set (by default: on a terminal only)")
        if name == "serve":
            from crispflow.serving.cli import add_arguments

            add_arguments(cmd)
        if name == "drift":
            from crispflow.monitoring.cli import add_arguments

            add_arguments(cmd)
        if name == "ledger":
            from crispflow.release.ledger_cli import add_arguments as add_ledger_arguments

            add_ledger_arguments(cmd)
        if name == "erase":
            from crispflow.erasure.cli import add_arguments as add_erase_arguments

            add_erase_arguments(cmd)
        if name == "validate":
            from crispflow.stack.validate import MAX_PARSE_SECONDS, MAX_PLUGIN_IMPORT_MS, PARTS

            cmd.add_argument("--only", action="append", choices=PARTS,
                             help="check only this part (repeatable; default: all), e.g. in a pre-commit hook")
            cmd.add_argument("--pipelines", metavar="DIR", help="spec folder (default: include/pipelines)")
            cmd.add_argument("--dags", metavar="DIR", help="DAG folder (default: dags)")
            cmd.add_argument("--plugins", metavar="DIR", help="plugins folder (default: plugins)")
            cmd.add_argument("--max-parse-seconds", type=float, default=MAX_PARSE_SECONDS,
                             help="parse time limit of one DAG file (default: %(default)s)")
            cmd.add_argument("--max-plugin-import-ms", type=float, default=MAX_PLUGIN_IMPORT_MS,
                             help="import time limit of the plugin file (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(command).parse_args(argv)
    private_umask()  # what any command writes (stack state, token files, reports) is its user's only
    try:
        return args.func(args, Settings.from_env())
    except CrispflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
