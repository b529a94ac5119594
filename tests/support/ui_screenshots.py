"""Screenshots of the crispflow pages on a running stack (after `make demo`), for the README:

    .venv/bin/python tests/support/ui_screenshots.py [--home .crispflow] [--out docs/ui]

Logs in as `reviewer` (role user: the buttons are enabled) with the browser the UI tests use, opens each page
inside the Airflow UI and saves models.png, version.png (the champion), promotions.png, drift.png and run-tab.png
(the newest training run that registered a model). Fails on console errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `support` as the tests import it

from crispflow.model import registry
from crispflow.stack.airflow_api import AirflowAPI
from crispflow.stack.credentials import load_secrets
from crispflow.stack.ports import Ports
from support.browser import Session, chromium

PIPELINE = "lending_club"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".crispflow"))
    parser.add_argument("--out", type=Path, default=Path("docs/ui"))
    args = parser.parse_args()
    creds = load_secrets(args.home)
    if creds is None:
        raise SystemExit(f"no stack secrets in {args.home}: run `make demo` first")
    ports = Ports.from_env()
    base = f"http://127.0.0.1:{ports.airflow}"
    api = AirflowAPI(base, "admin", creds.admin_password)
    name = registry.model_name(PIPELINE)
    mlf = registry.client(f"http://127.0.0.1:{ports.mlflow}")
    champion = str(mlf.get_model_version_by_alias(name, "champion").version)
    trained = [r for r in api.dag_runs("train_evaluate_register", limit=50, newest_first=True)
               if r["state"] == "success" and any(t["task_id"] == "register" and t["state"] == "success"
                                                  for t in api.task_instances("train_evaluate_register",
                                                                              r["dag_run_id"]))]
    args.out.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        s = Session(browser, base, "reviewer", creds.reviewer_password, args.out)
        frame = s.open_view("crispflow-models", then=name, expect=f"tr#v-{champion}")
        s.shot("models")
        frame.locator(f"tr#v-{champion} a:has-text('v{champion}')").first.click()
        frame.locator("#verdict").wait_for(timeout=60_000)
        s.shot("version")
        s.open_view("crispflow-promotions", then=name, expect="tr#seq-1")
        s.shot("promotions")
        s.open_view("crispflow-drift", then=name, expect="svg rect.cell")
        s.shot("drift")
        if trained:
            s.open_run_tab("train_evaluate_register", trained[0]["dag_run_id"])
            s.shot("run-tab")
        errors = s.close()
    print(f"screenshots in {args.out}")
    if errors:
        print("console errors:", *errors, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
