"""`crispflow serve`: run the model server in the foreground (uvicorn, one worker, no reload).

The model defaults to `CRISPFLOW_SERVE_MODEL`, else to the model of the only pipeline spec in the pipelines
folder. The server starts without a registered model (/health 200, /ready 503) and picks the champion up when
it appears. SIGTERM or Ctrl-C: uvicorn stops accepting, finishes in-flight requests, then the app's lifespan
shutdown flushes the prediction log.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from crispflow.errors import CrispflowError

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
    parser.add_argument("--model", help=f"registered model name (default: ${MODEL_ENV}, else the model of the only "
                                        "pipeline spec)")
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


def default_model(settings: Settings) -> str:
    """$CRISPFLOW_SERVE_MODEL, else `crispflow-<name>` of the only spec in the pipelines folder."""
    from crispflow.model.registry import model_name

    if env := os.environ.get(MODEL_ENV, "").strip():
        return env
    specs = sorted(settings.pipelines_dir.glob("*.yaml"))
    if len(specs) != 1:
        raise CrispflowError(f"--model: not given, ${MODEL_ENV} is unset and {settings.pipelines_dir} holds "
                             f"{len(specs)} pipeline specs (need exactly one to choose by default)")
    return model_name(specs[0].stem)


def feedback_labels(settings: Settings, model: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The target values of the spec behind `model` (e.g. "bad" → 1, "good" → 0), so /feedback accepts them."""
    from crispflow.model.registry import model_name
    from crispflow.spec import load_spec_file

    for path in sorted(settings.pipelines_dir.glob("*.yaml")):
        if model_name(path.stem) != model:
            continue
        try:
            spec = load_spec_file(path)
        except CrispflowError:
            return (), ()
        positive = str(spec.target.positive)
        column = next((c for c in spec.columns if c.name == spec.target.column), None)
        allowed = [str(v) for v in (getattr(column, "allowed", None) or [])]
        return (positive,), tuple(v for v in allowed if v != positive)
    return (), ()


def build_config(args: argparse.Namespace, settings: Settings) -> ServeConfig:
    from crispflow.serving.config import ServeConfig

    model = args.model or default_model(settings)
    predictions = args.predictions_url or settings.predictions_url
    positive, negative = feedback_labels(settings, model)
    return ServeConfig(model=model, tracking_uri=args.tracking_uri or settings.mlflow_tracking_uri,
                       predictions_url=None if predictions.lower() == "none" else predictions,
                       poll_interval=args.poll_interval, max_body_bytes=args.max_body_bytes,
                       max_records=args.max_records, positive_labels=positive, negative_labels=negative)


def _without_credentials(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    return parts._replace(netloc=f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or "").geturl()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown."""
    import uvicorn

    from crispflow.serving.app import create_app

    config = build_config(args, settings)
    port = args.port or settings.serve_port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("crispflow.serving").info("serving %s on http://%s:%s (registry %s)", config.model,
                                                args.host, port, _without_credentials(config.tracking_uri or ""))
    uvicorn.run(create_app(config), host=args.host, port=port, workers=1, log_level="warning", access_log=False,
                timeout_graceful_shutdown=30)
    return 0
