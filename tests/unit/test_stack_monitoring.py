"""The prod-local monitoring configuration (crispflow.stack.monitoring.render), checked by Prometheus' and
Alertmanager's own tools (promtool, amtool from Debian's packages: `make monitoring-tools`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import bcrypt
import pytest
import yaml

from crispflow.settings import project_root
from crispflow.stack.errors import StackError
from crispflow.stack.monitoring import SECRET_ENV, TIME_SCALE_ENV, render, scaled, time_scale
from crispflow.stack.ports import Ports

PORTS = Ports(airflow=18080, mlflow=15000, serve=18000, s3=19000, prometheus=19090, alertmanager=19093,
              telemetry=19464)
SECRETS = {SECRET_ENV["admin"]: "admin-pw", SECRET_ENV["airflow"]: "airflow-pw",
           SECRET_ENV["telemetry"]: "tel-token", SECRET_ENV["serve_metrics"]: "cft_metrics"}


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: `make monitoring-tools` installs Debian's prometheus and prometheus-alertmanager"
    return found


def rendered(tmp_path: Path, **extra: str) -> Path:
    folder = tmp_path / "monitoring"
    render(folder, PORTS, project_root(), SECRETS | extra)
    return folder


def test_the_rendered_configuration_passes_promtool_and_amtool(tmp_path: Path) -> None:
    folder = rendered(tmp_path)
    for argv in ((tool("promtool"), "check", "config", str(folder / "prometheus.yml")),
                 (tool("promtool"), "check", "web-config", str(folder / "web.yml")),
                 (tool("amtool"), "check-config", str(folder / "alertmanager.yml"))):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"


def test_every_file_is_private_and_passwords_are_stored_as_bcrypt_hashes(tmp_path: Path) -> None:
    folder = rendered(tmp_path)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(
        [p.name for p in folder.iterdir()], 0o600)
    users = yaml.safe_load((folder / "web.yml").read_text())["basic_auth_users"]
    assert bcrypt.checkpw(b"admin-pw", users["admin"].encode())
    assert bcrypt.checkpw(b"airflow-pw", users["airflow"].encode())
    texts = "".join(p.read_text() for p in folder.iterdir() if p.suffix == ".yml")
    assert not [s for s in SECRETS.values() if s in texts], "a secret in a config file (only in credential files)"
    assert (folder / "telemetry-token").read_text() == "tel-token"


def test_prometheus_scrapes_this_stacks_ports_and_alertmanager_delivers_to_its_inbox(tmp_path: Path) -> None:
    folder = rendered(tmp_path)
    prom = yaml.safe_load((folder / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in prom["scrape_configs"]}
    assert targets == {"crispflow-model-server": ["127.0.0.1:18000"], "airflow": ["127.0.0.1:19464"],
                       "prometheus": ["127.0.0.1:19090"], "alertmanager": ["127.0.0.1:19093"]}
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    am = yaml.safe_load((folder / "alertmanager.yml").read_text())
    hooks = [h for r in am["receivers"] for h in r["webhook_configs"]]
    assert {h["url"] for h in hooks} == {"http://127.0.0.1:19464/v1/alerts"}
    assert {h["http_config"]["authorization"]["credentials_file"] for h in hooks} == {str(folder / "telemetry-token")}


def test_the_time_scale_shortens_rules_and_routing_but_never_below_its_floors(tmp_path: Path) -> None:
    shipped = yaml.safe_load((project_root() / "include" / "monitoring" / "alerts.yml").read_text())
    plain = rendered(tmp_path / "plain")
    rules = yaml.safe_load((plain / "alerts.yml").read_text())
    assert rules == shipped, "without a time scale the shipped rules are used as they are"
    fast = rendered(tmp_path / "fast", **{TIME_SCALE_ENV: "30"})
    fors = {r["alert"]: r["for"] for g in yaml.safe_load((fast / "alerts.yml").read_text())["groups"]
            for r in g["rules"]}
    originals = {r["alert"]: r["for"] for g in shipped["groups"] for r in g["rules"]}
    assert fors == {name: ("0m" if value == "0m" else scaled(value, 30, floor=30)) for name, value in originals.items()}
    route = yaml.safe_load((fast / "alertmanager.yml").read_text())["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("1s", "10s", "120s")
    assert yaml.safe_load((fast / "prometheus.yml").read_text())["global"]["scrape_interval"] == "5s"
    assert scaled("10m", 30, floor=30) == "30s" and scaled("1h", 30) == "120s" and scaled("0m", 30) == "0m"


@pytest.mark.parametrize("raw", ["0.5", "fast", "100000"])
def test_a_bad_time_scale_is_refused(raw: str) -> None:
    with pytest.raises(StackError, match=TIME_SCALE_ENV):
        time_scale({TIME_SCALE_ENV: raw})


def test_a_missing_secret_is_named(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=SECRET_ENV["telemetry"]):
        without = {k: v for k, v in SECRETS.items() if k != SECRET_ENV["telemetry"]}
        render(tmp_path / "m", PORTS, project_root(), without)
