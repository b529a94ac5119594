"""Secrets on the console (issue 12): `crispflow status/up/demo` print the admin password and the model server
tokens outside CI or with --show-secrets, never when $CI is set (then: where they are);
`up` writes the tokens' hashes where the model server reads them."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from crispflow.serving.tokens import TokenStore
from crispflow.settings import Settings
from crispflow.stack import control as stack
from crispflow.stack.credentials import load_or_create_secrets
from crispflow.stack.local import airflow_env, serve_spec
from crispflow.stack.main import main
from crispflow.stack.ports import Ports

PORTS = Ports(airflow=18081, mlflow=15001, serve=18001, s3=19001)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CRISPFLOW_HOME", str(tmp_path / "home"))
    for var in ("CRISPFLOW_LAKE_URL", "CRISPFLOW_SERVE_PORT", "CRISPFLOW_PREDICTIONS_URL", "MLFLOW_TRACKING_URI",
                "CRISPFLOW_SERVE_TOKENS_FILE"):
        monkeypatch.delenv(var, raising=False)
    return Settings.from_env()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_secrets_are_shown_outside_ci_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("sys.stdout", _Tty())
    assert stack.secrets_visible() is True
    for truthy in ("true", "1", "yes"):
        monkeypatch.setenv("CI", truthy)
        assert stack.secrets_visible() is False and stack.secrets_visible(True) is True
    monkeypatch.setenv("CI", "false")
    assert stack.secrets_visible() is True
    monkeypatch.setattr("sys.stdout", io.StringIO())  # a person's own pipe or log file, outside CI
    assert stack.secrets_visible() is True
    monkeypatch.setenv("CI", "true")
    assert stack.secrets_visible() is False


def test_status_hides_the_password_and_tokens_in_ci_and_says_where_they_are(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    creds = load_or_create_secrets(settings.home)
    monkeypatch.setenv("CI", "true")
    secrets = (creds.admin_password, creds.serve_client_token, creds.serve_admin_token, creds.serve_metrics_token)
    main(["status"])
    hidden = capsys.readouterr().out
    assert not any(s in hidden for s in secrets)
    assert "crispflow status --show-secrets" in hidden and str(settings.home / "secrets.json") in hidden
    assert "token demo-client (predict,feedback)" in hidden and "token admin (admin,metrics)" in hidden
    main(["status", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["login"]["password"] is None and [t["token"] for t in data["serve_tokens"]] == [None] * 3
    main(["status", "--show-secrets"])
    shown = capsys.readouterr().out
    assert all(s in shown for s in secrets)
    main(["status", "--json", "--show-secrets"])
    data = json.loads(capsys.readouterr().out)
    assert data["login"]["password"] == creds.admin_password
    assert {t["name"]: t["token"] for t in data["serve_tokens"]} == {"demo-client": creds.serve_client_token,
                                                                      "admin": creds.serve_admin_token,
                                                                      "prometheus": creds.serve_metrics_token}


def test_status_and_the_demo_print_the_ui_pages(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """The crispflow UI plugin's pages under the Airflow URL: in `crispflow status` (text and JSON) and in what
    `crispflow demo` prints after its summary (`format_access`, also when the demo fails)."""
    status = stack.collect_status(settings)
    pages = {name: f"{status.airflow_url}/crispflow/{name}" for name in ("models", "promotions", "drift")}
    main(["status"])
    text = capsys.readouterr().out
    for name, url in pages.items():
        assert re.search(rf"^  (pages:)? +{name} +{re.escape(url)}$", text, flags=re.MULTILINE), name
    assert text.index("Airflow UI:") < text.index(pages["models"]) < text.index("MLflow UI:")
    main(["status", "--json"])
    assert json.loads(capsys.readouterr().out)["ui_pages"] == pages
    access = stack.format_access(status)
    assert all(url in access for url in pages.values())


def test_up_writes_the_token_hashes_the_server_reads(settings: Settings) -> None:
    creds = load_or_create_secrets(settings.home)
    stack.write_serve_tokens(settings, creds)
    stack.write_serve_tokens(settings, creds)  # idempotent
    path = stack.serve_tokens_file(settings)
    text = path.read_text()
    assert creds.serve_client_token not in text and creds.serve_admin_token not in text
    store = TokenStore(path)
    client, admin = store.authenticate(creds.serve_client_token), store.authenticate(creds.serve_admin_token)
    assert (client.name, client.scopes) == ("demo-client", frozenset({"predict", "feedback"}))
    assert (admin.name, admin.scopes) == ("admin", frozenset({"admin", "metrics"}))
    spec = serve_spec(PORTS, airflow_env(settings, PORTS, creds))
    assert spec.env["CRISPFLOW_SERVE_TOKENS_FILE"] == str(path)
    assert not any(creds.serve_client_token in a for a in spec.argv)


def test_a_home_from_before_the_tokens_gets_them_on_the_next_up(settings: Settings) -> None:
    path = settings.home / "secrets.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"admin_password": "a", "jwt_secret": "j", "api_secret_key": "k", "fernet_key": "f"}))
    creds = load_or_create_secrets(settings.home)
    assert creds.admin_password == "a" and creds.serve_client_token.startswith("cft_")
    assert creds.serve_admin_token.startswith("cft_") and creds.serve_admin_token != creds.serve_client_token
    assert load_or_create_secrets(settings.home) == creds
