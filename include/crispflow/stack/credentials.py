"""The stack's generated secrets (admin password, JWT secret, Fernet key, MLflow's admin password for the
prod-local profile), kept in files only the owner reads."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from crispflow.stack.errors import StackError
from crispflow.stack.paths import StackPaths

ADMIN_USER = "admin"
# Airflow people besides admin: `reviewer` (role user) may answer approvals (a forced blessing needs a second
# person: the requester cannot approve it); `viewer` (role viewer) reads only
REVIEWER_USER, AIRFLOW_VIEWER_USER = "reviewer", "viewer"
AIRFLOW_USERS = {ADMIN_USER: "admin", REVIEWER_USER: "user", AIRFLOW_VIEWER_USER: "viewer"}  # user: role
MLFLOW_ADMIN_USER = "admin"  # MLflow basic auth (prod-local profile)
# per-service MLflow users (prod_setup.MLFLOW_USERS says what each may do); crispflow-ui: the Airflow api-server,
# where the crispflow UI plugin reads models, verdicts and cards
MLFLOW_AIRFLOW_USER, MLFLOW_SERVING_USER, MLFLOW_VIEWER_USER = "crispflow-airflow", "crispflow-serving", "viewer"
MLFLOW_UI_USER = "crispflow-ui"
# Added after the first release: a secrets.json without them gets them generated and written on the next `up`.
LATER_FIELDS = ("mlflow_admin_password", "mlflow_flask_secret", "serve_client_token", "serve_admin_token")
LATER_FIELDS += ("mlflow_airflow_password", "mlflow_serving_password", "mlflow_viewer_password")
LATER_FIELDS += ("reviewer_password", "viewer_password")
LATER_FIELDS += ("mlflow_ui_password", "ledger_reader_password")
LATER_FIELDS += ("serve_metrics_token", "monitoring_admin_password", "monitoring_airflow_password", "telemetry_token")
LATER_FIELDS += ("pseudonym_keys",)


@dataclass(frozen=True)
class Secrets:
    """Generated once per home, stored in `<home>/secrets.json` (mode 0600)."""

    admin_password: str
    jwt_secret: str
    api_secret_key: str
    fernet_key: str
    mlflow_admin_password: str = ""  # MLflow basic auth needs 12+ characters
    mlflow_flask_secret: str = ""  # CSRF secret of MLflow's basic-auth app
    mlflow_airflow_password: str = ""  # MLflow user crispflow-airflow: the workers (training, promotion)
    mlflow_serving_password: str = ""  # MLflow user crispflow-serving: the model server (read-only)
    mlflow_viewer_password: str = ""  # MLflow user viewer: people browsing the MLflow UI (read-only)
    serve_client_token: str = ""  # model server token `demo-client` (predict, feedback): the demo's traffic
    serve_admin_token: str = ""  # model server token `admin` (admin, metrics): /models, /metrics
    reviewer_password: str = ""  # Airflow user `reviewer` (role user): answers approvals
    viewer_password: str = ""  # Airflow user `viewer` (role viewer): read-only
    mlflow_ui_password: str = ""  # MLflow user crispflow-ui: the Airflow api-server's UI plugin (read-only)
    ledger_reader_password: str = ""  # the ledger's SELECT-only PostgreSQL role (prod-local): the api-server
    serve_metrics_token: str = ""  # model server token `prometheus` (metrics): Prometheus' scrapes
    monitoring_admin_password: str = ""  # Prometheus and Alertmanager web login `admin` (prod-local)
    monitoring_airflow_password: str = ""  # Alertmanager login `airflow`: the workers silence acknowledged alerts
    telemetry_token: str = ""  # the OTLP bridge / alert inbox: Airflow's pushes, Prometheus, Alertmanager
    # HMAC keys of stored pseudonyms (crispflow.governance.pseudonyms): the workers' crispflow_pseudonyms
    # connection and the model server; never in the lake
    pseudonym_keys: str = ""

    @classmethod
    def generate(cls) -> Secrets:
        return cls(
            admin_password=secrets.token_urlsafe(16),
            jwt_secret=secrets.token_urlsafe(64),  # PyJWT warns below 64 bytes for the HS512 Airflow uses
            api_secret_key=secrets.token_urlsafe(32),
            fernet_key=base64.urlsafe_b64encode(os.urandom(32)).decode(),
            mlflow_admin_password=secrets.token_hex(16),  # hex: safe in URLs and ini files
            mlflow_flask_secret=secrets.token_hex(32),
            mlflow_airflow_password=secrets.token_hex(16),
            mlflow_serving_password=secrets.token_hex(16),
            mlflow_viewer_password=secrets.token_hex(16),
            serve_client_token=_serve_token(),
            serve_admin_token=_serve_token(),
            reviewer_password=secrets.token_urlsafe(16),
            viewer_password=secrets.token_urlsafe(16),
            mlflow_ui_password=secrets.token_hex(16),
            ledger_reader_password=secrets.token_hex(16),  # hex: safe in a database URL
            serve_metrics_token=_serve_token(),
            monitoring_admin_password=secrets.token_urlsafe(16),
            monitoring_airflow_password=secrets.token_hex(16),  # hex: safe in a connection URI
            telemetry_token=secrets.token_hex(32),  # hex: safe in OTEL_EXPORTER_OTLP_HEADERS (comma/equals split)
            pseudonym_keys=_pseudonym_key(),
        )

    @classmethod
    def unset(cls) -> Secrets:
        """Placeholders, for read-only views of a profile (status) when none were generated yet."""
        return cls("", "", "", "")

    @property
    def complete(self) -> bool:
        return all(getattr(self, name) for name in LATER_FIELDS)


def _pseudonym_key() -> str:
    from crispflow.governance.pseudonyms import generate_key

    return generate_key("hk1")


def pseudonym_connection(creds: Secrets) -> str:
    """The `crispflow_pseudonyms` Airflow connection (JSON for AIRFLOW_CONN_CRISPFLOW_PSEUDONYMS): the keys in its
    password."""
    return json.dumps({"conn_type": "generic", "password": creds.pseudonym_keys})


def _serve_token() -> str:
    from crispflow.serving.tokens import new_token

    return new_token()


def load_secrets(home: Path) -> Secrets | None:
    """The stack's secrets, or None if `up` never ran in this home."""
    path = StackPaths(home).secrets_file
    try:
        data = json.loads(path.read_text())
        return Secrets(
            **{f.name: data[f.name] for f in fields(Secrets) if f.name in data or f.name not in LATER_FIELDS}
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is unreadable ({exc}); delete it to generate new secrets") from None


def load_or_create_secrets(home: Path) -> Secrets:
    """Read `<home>/secrets.json`, creating it (0600, exclusively) on first use."""
    path = StackPaths(home).secrets_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if (found := load_secrets(home)) is not None:
        if not found.complete:  # written before the later fields existed: add them, keep the others
            fresh = Secrets.generate()
            found = replace(found, **{name: getattr(found, name) or getattr(fresh, name) for name in LATER_FIELDS})
            tmp = path.with_suffix(".tmp")
            _write_private(tmp, json.dumps(asdict(found), indent=2) + "\n")
            tmp.replace(path)
        path.chmod(0o600)
        return found
    new = Secrets.generate()
    try:
        _write_private(path, json.dumps(asdict(new), indent=2) + "\n", exclusive=True)
    except FileExistsError:  # another `up` won the race: use its secrets
        return load_or_create_secrets(home)
    return new


def write_passwords_file(paths: StackPaths, creds: Secrets) -> None:
    """SimpleAuthManager's password file: JSON `{"user": "password"}`; Airflow adds only missing users."""
    passwords = {ADMIN_USER: creds.admin_password, REVIEWER_USER: creds.reviewer_password,
                 AIRFLOW_VIEWER_USER: creds.viewer_password}
    _write_private(paths.passwords_file, json.dumps(passwords) + "\n")


def _write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write a file readable by its owner only (0600 from creation, no window with wider access)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)
