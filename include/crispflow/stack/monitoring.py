"""Prometheus, Alertmanager and the telemetry bridge of the prod-local profile, from Debian's packages.

Three processes, all on loopback and all authenticated:

- `telemetry` (`crispflow.monitoring.telemetry_server`): Airflow 3.3 pushes its metrics over OTLP/HTTP only, and
  Debian's Prometheus 2.42 has no OTLP receiver, so the bridge takes the pushes (delta temporality: any number of
  Airflow processes add up) and Prometheus scrapes them as `airflow_*`; it is also Alertmanager's webhook receiver
  (the alert inbox, `<home>/monitoring/notifications.jsonl`). Bearer token.
- `prometheus`: scrapes the model server (its own `metrics`-scoped token), the bridge, itself and Alertmanager;
  evaluates include/monitoring/alerts.yml; sends alerts to Alertmanager. Basic auth (bcrypt, `web.yml`).
- `alertmanager`: routes, groups, inhibits and deduplicates (include/monitoring/alertmanager.yml) and delivers to the
  inbox. Basic auth; the Airflow workers log in as `airflow` to create the silence of an acknowledged drift alert.

`render` writes their configuration under `<home>/monitoring/` (a setup step of `up`): the shipped files with this
stack's ports and credential files. With CRISPFLOW_ALERT_TIME_SCALE=N (tests only) every `for:`, scrape/evaluation
interval and Alertmanager group timing is divided by N (a `for:` never below 30 s, scrapes never more often than
every 5 s, nothing below 1 s), so an end-to-end test sees in seconds what takes minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crispflow.stack.errors import StackError
from crispflow.stack.ports import HOST, Ports

TELEMETRY, PROMETHEUS, ALERTMANAGER = "telemetry", "prometheus", "alertmanager"
MONITORING_STEP = "monitoring-config"
ADMIN, AIRFLOW_USER = "admin", "airflow"  # the web logins of Prometheus and Alertmanager
TIME_SCALE_ENV = "CRISPFLOW_ALERT_TIME_SCALE"
ALERTMANAGER_CONN_ID = "crispflow_alertmanager"
# what the render step reads from its environment (never argv: `ps` shows argv)
SECRET_ENV = {
    "admin": "CRISPFLOW_MONITORING_ADMIN_PASSWORD",
    "airflow": "CRISPFLOW_MONITORING_AIRFLOW_PASSWORD",
    "telemetry": "CRISPFLOW_TELEMETRY_TOKEN",
    "serve_metrics": "CRISPFLOW_SERVE_METRICS_TOKEN",
}
BINARIES = {PROMETHEUS: "prometheus", ALERTMANAGER: "prometheus-alertmanager"}
# what a person opens: Debian's Prometheus serves its classic web UI; Debian's Alertmanager ships none (API, amtool)
UI_NOTES = {PROMETHEUS: "web UI: /classic/alerts, /classic/targets",
            ALERTMANAGER: "API only (Debian ships no web UI): amtool --alertmanager.url=... silence query"}
FOR_FLOOR = 30.0  # a scaled `for:` stays >= 30 s: a process still starting is not an outage
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def monitoring_dir(home: Path) -> Path:
    return home / "monitoring"


def binary(name: str) -> str:
    """The Debian package's executable (`make monitoring-tools` installs it)."""
    found = shutil.which(BINARIES[name]) or f"/usr/bin/{BINARIES[name]}"
    return found


def time_scale(environ: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get(TIME_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise StackError(f"{TIME_SCALE_ENV}={raw!r}: expected a number >= 1") from None
    if not 1 <= value <= 3600:
        raise StackError(f"{TIME_SCALE_ENV}={raw!r}: expected a number from 1 to 3600")
    return value


def scaled(duration: str, scale: float, floor: float = 1.0) -> str:
    """A Prometheus duration divided by `scale` (never below `floor` seconds, except 0 stays 0)."""
    match = _DURATION.match(str(duration))
    if not match:
        raise StackError(f"duration {duration!r}: expected e.g. 30s, 5m, 1h")
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if seconds == 0 or scale == 1:
        return str(duration)
    return f"{max(floor, round(seconds / scale)):.0f}s"


# --------------------------------------------------------------------------- the configuration files


def prometheus_config(ports: Ports, folder: Path, scale: float) -> dict[str, Any]:
    # never below 5 s: the scrape timeout equals the interval, and a scrape that times out (the model server reads
    # the drift store inside /metrics) marks every series stale, which resets the `for:` of pending alerts
    interval = scaled("15s", scale, floor=5)
    basic = {"username": ADMIN, "password_file": str(folder / "admin-password")}
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(folder / "alerts.yml")],
        "alerting": {"alertmanagers": [{"basic_auth": basic,
                                        "static_configs": [{"targets": [f"{HOST}:{ports.alertmanager}"]}]}]},
        "scrape_configs": [
            {"job_name": "crispflow-model-server", "metrics_path": "/metrics",
             "authorization": {"type": "Bearer", "credentials_file": str(folder / "serve-metrics-token")},
             "static_configs": [{"targets": [f"{HOST}:{ports.serve}"]}]},
            # Airflow's metrics, pushed over OTLP to the bridge; `service` says which component sent them
            {"job_name": "airflow", "metrics_path": "/metrics", "honor_labels": True,
             "authorization": {"type": "Bearer", "credentials_file": str(folder / "telemetry-token")},
             "static_configs": [{"targets": [f"{HOST}:{ports.telemetry}"]}]},
            {"job_name": "prometheus", "basic_auth": basic,
             "static_configs": [{"targets": [f"{HOST}:{ports.prometheus}"]}]},
            {"job_name": "alertmanager", "basic_auth": basic,
             "static_configs": [{"targets": [f"{HOST}:{ports.alertmanager}"]}]},
        ],
    }


def alert_rules(shipped: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """include/monitoring/alerts.yml with every `for:` divided by `scale`."""
    groups = []
    for group in shipped["groups"]:
        rules = [dict(rule, **({"for": scaled(rule["for"], scale, floor=FOR_FLOOR)} if "for" in rule else {}))
                 for rule in group["rules"]]
        groups.append(dict(group, rules=rules))
    return {"groups": groups}


def alertmanager_config(shipped: Mapping[str, Any], ports: Ports, folder: Path, scale: float) -> dict[str, Any]:
    """include/monitoring/alertmanager.yml with the inbox of this stack as its receiver and scaled timings."""
    config = dict(shipped)
    inbox = {"url": f"http://{HOST}:{ports.telemetry}/v1/alerts", "send_resolved": True,
             "http_config": {"authorization": {"type": "Bearer",
                                               "credentials_file": str(folder / "telemetry-token")}}}
    config["receivers"] = [{"name": r["name"], "webhook_configs": [inbox]} for r in shipped["receivers"]]

    def scale_route(route: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: (scaled(v, scale) if k in ("group_wait", "group_interval", "repeat_interval") else v)
               for k, v in route.items()}
        if "routes" in route:
            out["routes"] = [scale_route(r) for r in route["routes"]]
        return out

    config["route"] = scale_route(shipped["route"])
    return config


def web_config(passwords: Mapping[str, str]) -> dict[str, Any]:
    """Prometheus' and Alertmanager's `--web.config.file`: basic auth with bcrypt hashes."""
    import bcrypt

    return {"basic_auth_users": {user: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=10)).decode()
                                 for user, pw in passwords.items()}}


def render(folder: Path, ports: Ports, project_root: Path, environ: Mapping[str, str]) -> None:
    """Write every configuration and credential file of the three processes into `folder` (0700/0600)."""
    import yaml

    for name in BINARIES:
        if not Path(binary(name)).exists():
            raise StackError(f"{BINARIES[name]} is not installed: `make monitoring-tools` (Debian's prometheus and "
                             "prometheus-alertmanager packages)")
    secrets = {key: environ.get(var, "") for key, var in SECRET_ENV.items()}
    if missing := [SECRET_ENV[k] for k, v in secrets.items() if not v]:
        raise StackError(f"monitoring config: {', '.join(missing)} not set")
    scale = time_scale(environ)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    shipped = project_root / "include" / "monitoring"
    files = {
        "prometheus.yml": yaml.safe_dump(prometheus_config(ports, folder, scale), sort_keys=False),
        "alerts.yml": yaml.safe_dump(alert_rules(yaml.safe_load((shipped / "alerts.yml").read_text()), scale),
                                     sort_keys=False),
        "alertmanager.yml": yaml.safe_dump(alertmanager_config(
            yaml.safe_load((shipped / "alertmanager.yml").read_text()), ports, folder, scale), sort_keys=False),
        "web.yml": yaml.safe_dump(web_config({ADMIN: secrets["admin"], AIRFLOW_USER: secrets["airflow"]})),
        "admin-password": secrets["admin"],
        "telemetry-token": secrets["telemetry"],
        "serve-metrics-token": secrets["serve_metrics"],
    }
    for name, text in files.items():
        path = folder / name
        tmp = path.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """`python -m crispflow.stack.monitoring render <folder>`: the setup step (ports from CRISPFLOW_*_PORT)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "render":
        print("usage: python -m crispflow.stack.monitoring render <folder>", file=sys.stderr)
        return 2
    from crispflow.settings import project_root

    try:
        render(Path(args[1]), Ports.from_env(), project_root(), os.environ)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
