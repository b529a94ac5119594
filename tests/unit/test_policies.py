"""Policies live in the spec, a run may only tighten them: the per-field direction tables, the spec sections (their
defaults equal the policies' own), the tighten-only check (loosening, unknown fields, wrong types and fixed fields
are ParamsErrors naming the field, the spec's value and the rule), the Params schema a REST trigger is checked
against, the policy digest, and old specs keeping their hash."""

from __future__ import annotations

import re
from dataclasses import asdict, fields

import pytest
import yaml

from crispflow import policies
from crispflow.errors import ParamsError, SpecError
from crispflow.monitoring.drift import DriftSettings
from crispflow.monitoring.episodes import DriftPolicy, spec_policy
from crispflow.release.canary import CanaryPolicy, canary_policy
from crispflow.settings import project_root
from crispflow.spec import Alerts, Canary, DriftMonitor, DriftWatch, load_spec, parse_spec

KINDS = [(CanaryPolicy, Canary, policies.CANARY, "policy"),
         (DriftPolicy, DriftWatch, policies.DRIFT_WATCH, "policy"),
         (DriftSettings, DriftMonitor, policies.DRIFT_MONITOR, "settings")]


def demo_spec(**sections) -> dict:
    data = yaml.safe_load((project_root() / "include" / "pipelines" / "lending_club.yaml").read_text())
    return {**data, **sections}


def tightened(policy, overrides):
    return policy.tightened(overrides)


@pytest.mark.parametrize(("policy", "section", "directions", "_"), KINDS)
def test_every_field_has_a_direction_and_the_spec_defaults_equal_the_policys(policy, section, directions, _) -> None:
    names = {f.name for f in fields(policy)}
    assert set(directions) == names
    spec_fields = set(section.model_fields)
    assert spec_fields == names - {"alias"}  # the watched alias is not a spec setting
    assert policy(**section().model_dump()) == policy()


def test_the_spec_policies_of_an_old_spec_are_todays_defaults() -> None:
    spec = load_spec("lending_club")
    assert canary_policy(spec) == CanaryPolicy()
    assert spec_policy(spec) == DriftPolicy()
    assert DriftSettings.of_spec(spec) == DriftSettings()
    assert spec.alerts == Alerts() and [c["conn_id"] for c in spec.alerts.as_dicts()] == [
        "crispflow_alerts_webhook", "crispflow_alerts_slack"]


def _tighter(value, rule):
    """A stricter value than `value` in the field's direction (staying within the structural bounds)."""
    if isinstance(value, int):
        return value + 1 if rule == policies.RAISE else max(value - 1, 0)
    return value * 1.5 if rule == policies.RAISE else value / 2


def _looser(value, rule):
    if isinstance(value, int):
        return value - 1 if rule == policies.RAISE else value + 1
    return value / 2 if rule == policies.RAISE else value * 1.5 + 0.01


CASES = [(policy, name, rule, field) for policy, _, directions, field in KINDS for name, rule in directions.items()]


@pytest.mark.parametrize(("policy", "name", "rule", "field"), CASES,
                         ids=[f"{p.__name__}.{n}" for p, n, _, _ in CASES])
def test_each_field_moves_only_in_its_direction(policy, name, rule, field) -> None:
    base = policy(k=1, n=4) if policy is DriftPolicy else policy()  # k may fall and n rise within the k <= n rule
    value = getattr(base, name)
    assert base.tightened({name: value}) == base  # the spec's own value is always a no-op
    if rule == policies.FIXED:
        other = "canary" if isinstance(value, str) else _tighter(value, policies.RAISE)
        with pytest.raises(ParamsError, match=re.escape(f"{field}.{name}: {other!r} differs from the spec's "
                                                        f"{value!r}; it is not overridable by a run")):
            base.tightened({name: other})
        return
    stricter = _tighter(value, rule)
    if name != "k":  # k = 1 cannot fall further
        assert getattr(base.tightened({name: stricter}), name) == stricter
    looser = _looser(value, rule)
    verb = "raise" if rule == policies.RAISE else "lower"
    with pytest.raises(ParamsError, match=re.escape(f"{field}.{name}: {looser!r} would loosen the spec's "
                                                    f"{value!r}; a run may only {verb} it")):
        base.tightened({name: looser})


def test_the_issues_example_is_refused_naming_the_field() -> None:
    loose = {"margin": 100, "min_labels": 2, "min_requests": 1, "max_score_psi": 1e9}
    with pytest.raises(ParamsError, match=re.escape("policy.margin: 100 would loosen the spec's 0.02; a run may "
                                                    "only lower it")):
        CanaryPolicy().tightened(loose)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"bogus": 1}, "policy: unknown field(s) ['bogus']; a run may override ['margin', 'max_error_rate_increase', "
                   "'max_p95_ratio', 'max_score_psi', 'min_labels', 'min_requests', 'p95_slack_ms']"),
    ({"min_labels": True}, "policy.min_labels: True must be an integer"),
    ({"min_labels": 300.5}, "policy.min_labels: 300.5 must be an integer"),
    ({"margin": "0.01"}, "policy.margin: '0.01' must be a finite number"),
    ({"margin": float("nan")}, "policy.margin: nan must be a finite number"),
    ([1], "policy: must be an object, got list"),
    ("{margin", "policy: '{margin' is not a JSON object"),
])
def test_malformed_overrides_are_params_errors(overrides, message) -> None:
    with pytest.raises(ParamsError, match=re.escape(message)):
        CanaryPolicy().tightened(overrides)


def test_overrides_may_come_as_json_text_and_integers_for_floats() -> None:
    assert CanaryPolicy().tightened('{"min_labels": 300.0, "margin": 0}') == CanaryPolicy(min_labels=300, margin=0.0)
    assert CanaryPolicy().tightened(None) == CanaryPolicy().tightened(" ") == CanaryPolicy()


def test_cross_field_rules_still_hold_after_tightening() -> None:
    with pytest.raises(ParamsError, match=re.escape("policy.exit_share: 0.04 must be <= enter_share (0.03)")):
        DriftPolicy().tightened({"enter_share": 0.03, "exit_share": 0.04})
    with pytest.raises(ParamsError, match=re.escape("drift settings: min_drift_share: 0.0 must be in (0, 1]")):
        DriftSettings().tightened({"min_drift_share": 0})


def test_a_spec_section_sets_the_policy_and_runs_tighten_it() -> None:
    spec = parse_spec(demo_spec(canary={"min_labels": 500, "margin": 0.01}, drift_watch={"budget": 1},
                                drift_monitor={"alpha": 0.05}))
    assert canary_policy(spec) == CanaryPolicy(min_labels=500, margin=0.01)
    with pytest.raises(ParamsError, match=re.escape("policy.min_labels: 300 would loosen the spec's 500")):
        canary_policy(spec, {"min_labels": 300})
    assert spec_policy(spec).tightened({"budget": 0}).budget == 0
    with pytest.raises(ParamsError, match=re.escape("policy.budget: 2 would loosen the spec's 1")):
        spec_policy(spec).tightened({"budget": 2})
    with pytest.raises(ParamsError, match=re.escape("settings.alpha: 0.01 would loosen the spec's 0.05")):
        DriftSettings.of_spec(spec, {"alpha": 0.01})


@pytest.mark.parametrize(("sections", "message"), [
    ({"canary": {"margin": -1}}, "canary.margin: Input should be greater than or equal to 0"),
    ({"canary": {"bogus": 1}}, "canary.bogus: Extra inputs are not permitted"),
    ({"drift_watch": {"k": 4}}, "drift_watch.k: 4 must be <= n (3)"),
    ({"drift_watch": {"exit_share": 0.2}}, "drift_watch.exit_share: 0.2 must be <= enter_share (0.1)"),
    ({"drift_watch": {"lookback": 2}}, "drift_watch.lookback: 2 must be >= n (3)"),
    ({"drift_monitor": {"alpha": 1}}, "drift_monitor.alpha: Input should be less than 1"),
    ({"alerts": {"channels": [{"kind": "webhook"}]}}, "alerts.channels[0].conn_id: required for a webhook channel"),
    ({"alerts": {"channels": [{"kind": "email"}]}}, "alerts.channels[0].to: an email channel needs"),
    ({"alerts": {"channels": [{"kind": "sms", "conn_id": "x"}]}}, "alerts.channels[0].kind: Input should be"),
])
def test_bad_spec_sections_are_spec_errors_naming_the_field(sections, message) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(demo_spec(**sections), "<t>")


def test_alert_channels_come_from_the_spec() -> None:
    channels = [{"kind": "email", "to": ["oncall@example.org"]}, {"kind": "webhook", "conn_id": "team_hook",
                                                                   "endpoint": "/drift"}]
    spec = parse_spec(demo_spec(alerts={"channels": channels}))
    from crispflow.monitoring.alerts import check_channels

    assert [c["name"] for c in check_channels(spec.alerts.as_dicts())] == ["email:smtp_default", "webhook:team_hook"]


def test_old_specs_keep_their_hash_and_a_policy_section_changes_it() -> None:
    base = parse_spec(demo_spec())
    assert parse_spec(demo_spec(canary={}, alerts={})).spec_hash() == base.spec_hash()
    assert parse_spec(demo_spec(canary={"margin": 0.01})).spec_hash() != base.spec_hash()
    before = demo_spec()
    before["columns"] = [{"name": "emp_length", "type": "category"} if c["name"] == "emp_length" else c
                         for c in before["columns"]]  # emp_length was marked sensitive later (test_spec.py)
    assert parse_spec(before).spec_hash() == \
        "18f5a93dff9b14a6a036e06d3f09f4b4cad8b03a4dac7b6efc86c3af5713540c"  # the hash before the sections existed


def test_the_policy_digest_is_the_sha256_of_its_sorted_json() -> None:
    import hashlib
    import json

    policy = CanaryPolicy(min_labels=300)
    canonical = json.dumps(asdict(policy), sort_keys=True, separators=(",", ":")).encode()
    assert policy.digest() == hashlib.sha256(canonical).hexdigest() == CanaryPolicy(min_labels=300).digest()
    assert policy.digest() != CanaryPolicy().digest()


@pytest.mark.parametrize(("section", "value", "ok"), [
    ("canary", {"min_labels": 300, "margin": 0.01}, True),
    ("canary", {"margin": 100, "min_labels": 2}, True),  # structurally valid: the task checks it against the spec
    ("canary", {"margin": -0.1}, False),
    ("canary", {"margin": "small"}, False),
    ("canary", {"min_labels": 2.5}, False),
    ("canary", {"tau": 0.1}, False),  # not overridable: not in the schema
    ("canary", {"bogus": 1}, False),
    ("drift_watch", {"k": 1, "cooldown_hours": 12}, True),
    ("drift_watch", {"lookback": 10}, False),
    ("drift_watch", {"alert_channels": []}, False),
    ("drift_monitor", {"alpha": 0.05}, True),
    ("drift_monitor", {"min_rows": 1}, False),
])
def test_the_params_schema_refuses_wrong_types_and_unknown_fields(section, value, ok) -> None:
    pytest.importorskip("airflow")
    from airflow.sdk.definitions.param import Param, ParamValidationError

    from crispflow_airflow.dag_defaults import policy_param

    param = policy_param(section, "t")
    assert isinstance(param, Param) and param.schema["additionalProperties"] is False
    if ok:
        assert param.resolve(value) == value
    else:
        with pytest.raises(ParamValidationError):
            param.resolve(value)
