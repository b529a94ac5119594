"""The traffic policy: sticky canary assignment, shadow mirroring, tags read defensively."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from crispflow.serving.policy import CANARY, CHAMPION, TrafficPolicy, canary_bucket, policy_from_tags


def test_the_bucket_is_the_documented_hash() -> None:
    expected = int(hashlib.sha256(b"crispflow-m:loan-42").hexdigest()[:15], 16) / 16**15
    assert canary_bucket("crispflow-m", "loan-42") == expected
    assert 0.0 <= expected < 1.0


def test_an_entity_always_gets_the_same_arm() -> None:
    policy = TrafficPolicy(canary_share=0.3, entity_key="loan_id")
    for entity in map(str, range(200)):
        arms = {policy.arm("m", entity, str(uuid.uuid4()), has_canary=True) for _ in range(5)}
        assert len(arms) == 1, f"entity {entity} got {arms}"


def test_the_split_is_close_to_the_share() -> None:
    policy = TrafficPolicy(canary_share=0.2)
    n = 20_000
    canary = sum(policy.arm("m", str(i), "rid", has_canary=True) == CANARY for i in range(n))
    assert abs(canary / n - 0.2) < 0.015  # binomial sd at n=20k is 0.003


def test_raising_the_share_only_moves_entities_to_the_canary() -> None:
    low, high = TrafficPolicy(canary_share=0.1), TrafficPolicy(canary_share=0.5)
    for entity in map(str, range(2000)):
        if low.arm("m", entity, "r", has_canary=True) == CANARY:
            assert high.arm("m", entity, "r", has_canary=True) == CANARY


def test_without_an_entity_the_request_id_decides() -> None:
    policy = TrafficPolicy(canary_share=0.5)
    arms = [policy.arm("m", None, str(uuid.uuid4()), has_canary=True) for _ in range(400)]
    assert 120 < arms.count(CANARY) < 280


@pytest.mark.parametrize(("share", "has_canary"), [(0.0, True), (1.0, False), (0.7, False)])
def test_no_canary_traffic_without_a_share_or_a_canary(share: float, has_canary: bool) -> None:
    policy = TrafficPolicy(canary_share=share)
    assert {policy.arm("m", str(i), "r", has_canary=has_canary) for i in range(300)} == {CHAMPION}


def test_full_share_sends_everything_to_the_canary() -> None:
    policy = TrafficPolicy(canary_share=1.0)
    assert {policy.arm("m", str(i), "r", has_canary=True) for i in range(300)} == {CANARY}


def test_shadow_mirroring_follows_its_share_and_is_independent_of_the_canary() -> None:
    policy = TrafficPolicy(canary_share=0.5, shadow_share=0.25)
    ids = [str(uuid.uuid4()) for _ in range(4000)]
    mirrored = [policy.mirrored("m", rid, has_shadow=True) for rid in ids]
    assert abs(sum(mirrored) / len(ids) - 0.25) < 0.03
    canary = [policy.arm("m", None, rid, has_canary=True) == CANARY for rid in ids]
    both = sum(m and c for m, c in zip(mirrored, canary, strict=True)) / len(ids)
    assert abs(both - 0.125) < 0.025
    assert not any(policy.mirrored("m", rid, has_shadow=False) for rid in ids[:100])


def test_policy_from_tags() -> None:
    policy = policy_from_tags({"crispflow.canary_share": "0.25", "crispflow.shadow_share": "1",
                               "crispflow.entity_key": " loan_id "})
    assert (policy.canary_share, policy.shadow_share, policy.entity_key, policy.problems) == (0.25, 1.0, "loan_id",
                                                                                              ())
    assert policy.entity_of({"loan_id": 17}) == "17"
    assert policy.entity_of({"other": 1}) is None
    assert policy_from_tags({}) == TrafficPolicy()


@pytest.mark.parametrize("raw", ["abc", "1.5", "-0.1", "nan", "inf"])
def test_a_bad_share_tag_is_ignored_and_reported(raw: str) -> None:
    policy = policy_from_tags({"crispflow.canary_share": raw})
    assert policy.canary_share == 0.0
    assert len(policy.problems) == 1 and "crispflow.canary_share" in policy.problems[0]
