"""`crispflow serve`: run the model server in the foreground (uvicorn, one worker, no reload).

The server serves every crispflow model of the registry (`--only` narrows it by name patterns) and loads models
as they appear. The default model of the single-model routes (/predict, /feedback, /model) is `--model`, else
`CRISPFLOW_SERVE_MODEL`, else the model of the only pipeline spec in the pipelines folder, else (several specs)
the only registered model when there is exactly one. The server starts without any registered model (/health
200, /ready 503) and picks champions up when they appear. SIGTERM or Ctrl-C: uvicorn stops accepting, finishes
in-flight requests, then the app's lifespan shutdown flushes the prediction logs.

Every route but /health and /ready needs a bearer token (tokens.py): the server refuses to start without its token
file (`--tokens-file`, else $CRISPFLOW_SERVE_TOKENS_FILE, else $CRISPFLOW_HOME/serve-tokens.json; `crispflow up`
writes one). `crispflow serve token create --name NAME --scope predict [--scope feedback]` issues a token (its
secret printed once), `token list` shows names and scopes, `token revoke --name NAME` revokes it (a running
server stops accepting it within a second).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from crispflow.errors import CrispflowError
from crispflow.serving.tokens import SCOPES, TOKENS_ENV, TOKENS_FILE_NAME

if TYPE_CHECKING:
    from crispflow.serving.config import ServeConfig
    from crispflow.settings import Settings

MODEL_ENV = "CRISPFLOW_SERVE_MODEL"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"the default model of /predict, /feedback and /model (default: ${MODEL_ENV}, "
                                        "else the model of the only pipeline spec, else the only registered model); "
                                        "every crispflow model is served under /models/{name}/ either way")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="serve only the models whose name matches this fnmatch pattern (repeatable; "
                             "default: every crispflow model)")
    parser.add_argument("--max-models", type=_positive_int, default=32,
                        help="models kept loaded at once; the least recently requested is unloaded beyond it "
                             "(default 32)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default CRISPFLOW_SERVE_PORT or 8000)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI)")
    parser.add_argument("--predictions-url", help="prediction log root (default CRISPFLOW_PREDICTIONS_URL); "
                                                  "'none' disables logging")
    parser.add_argument("--poll-interval", type=_positive_float, default=2.0,
                        help="seconds between registry polls for alias moves (default 2)")
    parser.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20,
                        help="largest request body accepted (default 1 MiB)")
    parser.add_argument("--max-records", type=_positive_int, default=1000,
                        help="most records per /predict request (default 1000)")
    parser.add_argument("--tokens-file", help=f"the bearer tokens' file (default ${TOKENS_ENV}, else "
                                              f"$CRISPFLOW_HOME/{TOKENS_FILE_NAME}); every route but /health and "
                                              "/ready needs a token")
    parser.add_argument("--secret-token", action="append", default=[], metavar="NAME:SCOPES:FILE",
                        help="at start, make the secret in FILE (e.g. a Docker secret) the token NAME with these "
                             "comma-separated scopes, e.g. prometheus:metrics:/run/secrets/serve-metrics-token "
                             "(only its hash is written to the token file; repeatable)")
    parser.add_argument("--rate-limit", type=_positive_float, default=500.0,
                        help="requests per second per token (429 beyond; default 500)")
    parser.add_argument("--rate-burst", type=_positive_int, default=1000,
                        help="requests a token may send at once before the rate limit applies (default 1000)")
    parser.add_argument("--max-queue", type=_positive_int, default=1024,
                        help="/predict requests waiting per model before 503 (default 1024)")
    tokens = parser.add_subparsers(dest="token_command", metavar="token", required=False,
                                   help="`crispflow serve token create|list|revoke`: the server's bearer tokens")
    token = tokens.add_parser("token", help="issue, list or revoke the model server's bearer tokens")
    actions = token.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="issue a token; its secret is printed once, only its hash is kept")
    create.add_argument("--name", required=True, help="who or what the token is for (recorded with its feedback)")
    create.add_argument("--scope", action="append", required=True, choices=SCOPES,
                        help="a scope (repeatable): predict, feedback, admin (/model, /models), metrics")
    create.add_argument("--secret-file", help="register the secret in this file ('-': stdin) instead of a new one "
                                              "(e.g. the token a Prometheus Docker secret holds); only its hash is "
                                              "kept")
    revoke = actions.add_parser("revoke", help="revoke the token of that name (a running server stops "
                                               "accepting it within a second)")
    revoke.add_argument("--name", required=True)
    actions.add_parser("list", help="names, scopes, creation and revocation times (never the secrets)")
    for sub in (create, revoke, actions.choices["list"]):
        sub.add_argument("--tokens-file", help=f"default ${TOKENS_ENV}, else $CRISPFLOW_HOME/{TOKENS_FILE_NAME}")


def default_model(settings: Settings) -> str | None:
    """$CRISPFLOW_SERVE_MODEL, else `crispflow-<name>` of the only spec in the pipelines folder, else None (the
    server then defaults to the only registered model, if there is exactly one)."""
    from crispflow.model.registry import model_name

    if env := os.environ.get(MODEL_ENV, "").strip():
        return env
    specs = sorted(settings.pipelines_dir.glob("*.yaml"))
    return model_name(specs[0].stem) if len(specs) == 1 else None


def pipeline_options(settings: Settings) -> tuple[dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
                                                  dict[str, tuple[str, ...]]]:
    """What the specs in the pipelines folder tell the server, per model: the (positive, negative) target values
    of a binary spec (e.g. "bad" → 1, "good" → 0), so its /feedback accepts them, and the module prefixes its
    artifact may hold (`training.allowed_estimators`). Specs that do not load are skipped (the server needs none)."""
    from crispflow.model.registry import model_name
    from crispflow.spec import load_spec_file

    labels: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    trusted: dict[str, tuple[str, ...]] = {}
    for path in sorted(settings.pipelines_dir.glob("*.yaml")):
        try:
            spec = load_spec_file(path)
        except CrispflowError:
            continue
        name = model_name(path.stem)
        allowed_estimators = tuple(getattr(spec.training, "allowed_estimators", None) or ())
        if allowed_estimators:
            trusted[name] = allowed_estimators
        if getattr(spec, "task", "binary") != "binary":
            continue
        positive = str(spec.target.positive)
        column = next((c for c in spec.columns if c.name == spec.target.column), None)
        allowed = [str(v) for v in (getattr(column, "allowed", None) or [])]
        labels[name] = ((positive,), tuple(v for v in allowed if v != positive))
    return labels, trusted


def target_values(settings: Settings) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per model of a binary spec: its (positive, negative) target values (see `pipeline_options`)."""
    return pipeline_options(settings)[0]


def feedback_labels(settings: Settings, model: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The target values of the binary spec behind `model`, or ((), ()) when there is none."""
    return target_values(settings).get(model, ((), ()))


def build_config(args: argparse.Namespace, settings: Settings) -> ServeConfig:
    from crispflow.governance.pseudonyms import keys_from_env
    from crispflow.serving.config import ServeConfig

    model = args.model or default_model(settings)
    predictions = args.predictions_url or settings.predictions_url
    labels, trusted = pipeline_options(settings)
    positive, negative = labels.get(model, ((), ())) if model else ((), ())
    return ServeConfig(model=model, tracking_uri=args.tracking_uri or settings.mlflow_tracking_uri,
                       predictions_url=None if predictions.lower() == "none" else predictions,
                       poll_interval=args.poll_interval, max_body_bytes=args.max_body_bytes,
                       max_records=args.max_records, positive_labels=positive, negative_labels=negative,
                       only=tuple(args.only), max_models=args.max_models, feedback_labels=labels,
                       trusted=trusted, tokens_file=str(tokens_file(args, settings)),
                       rate_limit=args.rate_limit, rate_burst=args.rate_burst, max_queue=args.max_queue,
                       pseudonyms=keys_from_env())


def tokens_file(args: argparse.Namespace, settings: Settings) -> Path:
    from crispflow.serving.tokens import default_tokens_file

    return Path(args.tokens_file) if getattr(args, "tokens_file", None) else default_tokens_file(settings.home)


def run_token(args: argparse.Namespace, settings: Settings) -> int:
    """`crispflow serve token create|list|revoke`."""
    from crispflow.serving.tokens import create_token, read_records, revoke_token

    path = tokens_file(args, settings)
    if args.token_action == "create":
        given = None  # an operator's secret is registered like --secret-token: idempotent, rotated if it changed
        if args.secret_file:
            import sys

            given = (sys.stdin.read() if args.secret_file == "-" else Path(args.secret_file).read_text()).strip()
        if given is not None:
            from crispflow.serving.tokens import check_secret, ensure_token

            ensure_token(path, args.name, check_secret(given), args.scope)
        secret = given or create_token(path, args.name, args.scope)
        print(f"token {args.name!r} ({', '.join(args.scope)}) added to {path}" +
              ("" if given else "; its secret, shown only now:"))
        if not given:
            print(secret)
    elif args.token_action == "revoke":
        revoke_token(path, args.name)
        print(f"token {args.name!r} revoked in {path}")
    else:
        records = read_records(path)
        print(f"{len(records)} tokens in {path}" + (":" if records else ""))
        for r in records:
            state = f"revoked {r.revoked}" if r.revoked else "live"
            print(f"  {r.name:<24} {','.join(r.scopes):<32} created {r.created}  {state}")
    return 0


def _without_credentials(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    return parts._replace(netloc=f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or "").geturl()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown (`token ...`: manage the tokens instead)."""
    if getattr(args, "token_command", None):
        return run_token(args, settings)
    import uvicorn

    from crispflow.serving.app import create_app
    from crispflow.serving.tokens import register_secret_tokens

    config = build_config(args, settings)
    register_secret_tokens(config.tokens_file, args.secret_token)
    port = args.port or settings.serve_port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)  # TokenError (exit 1) when the token file is missing or malformed
    served = "every crispflow model" + (f" matching {', '.join(config.only)}" if config.only else "")
    default = f"default {config.model}" if config.model else "no default model unless exactly one is registered"
    logging.getLogger("crispflow.serving").info("serving %s (%s) on http://%s:%s (registry %s)", served, default,
                                                args.host, port, _without_credentials(config.tracking_uri or ""))
    uvicorn.run(app, host=args.host, port=port, workers=1, log_level="warning", access_log=False,
                timeout_graceful_shutdown=30)
    return 0
