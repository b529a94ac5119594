"""Training requests: conf wins, asset events are validated like conf, malformed payloads are refused clearly."""

from __future__ import annotations

import pytest

from crispflow.errors import ParamsError
from crispflow.run_requests import choose_training_request, training_request, training_requests

GOOD = {"pipeline": "lending_club", "dataset_version_id": "ds-0123456789abcdef"}


def test_conf_wins_over_events() -> None:
    event = {"pipeline": "other", "dataset_version_id": "ds-" + "f" * 16}
    req = training_request({**GOOD, "search_budget": 3}, [event])
    assert req["pipeline"] == "lending_club" and req["search_budget"] == 3 and req["source"] == "conf"


def test_the_newest_event_is_used_and_the_rest_coalesced() -> None:
    older = {"pipeline": "lending_club", "dataset_version_id": "ds-" + "a" * 16}
    req = training_request({"pipeline": None, "dataset_version_id": None}, [older, GOOD])
    assert req["dataset_version_id"] == GOOD["dataset_version_id"]
    assert req["source"] == "asset event" and req["coalesced_events"] == 1


@pytest.mark.parametrize(
    ("conf", "events", "message"),
    [
        ({}, [], "give both in conf, or let a published dataset trigger the run"),
        ({}, [{"pipeline": "../etc", "dataset_version_id": GOOD["dataset_version_id"]}], "asset event: pipeline"),
        ({}, [{"pipeline": "lending_club", "dataset_version_id": "ds-1; DROP"}], "asset event: dataset_version_id"),
        ({}, [{"pipeline": ["x"], "dataset_version_id": 5}], "asset event: pipeline ['x']"),
        ({}, [{}], "asset event: pipeline None"),
        ({"pipeline": "lending_club"}, [], "conf: dataset_version_id None"),
        ({**GOOD, "search_budget": 0}, [], "search_budget: 0 must be an integer from 1 to 200"),
        ({**GOOD, "search_budget": True}, [], "search_budget: True"),
        ({**GOOD, "force_bless": True}, [], "force_reason: forcing a blessing needs a reason"),
        ({**GOOD, "force_bless": "yes"}, [], "force_bless: 'yes' must be true or false"),
    ],
)
def test_malformed_requests_are_refused(conf, events, message) -> None:
    with pytest.raises(ParamsError) as err:
        training_request(conf, events)
    assert message in str(err.value)


def test_all_events_are_candidates_newest_first() -> None:
    older = {"pipeline": "lending_club", "dataset_version_id": "ds-" + "a" * 16}
    reqs = training_requests({"pipeline": None}, [older, GOOD])
    assert [r["dataset_version_id"] for r in reqs] == [GOOD["dataset_version_id"], older["dataset_version_id"]]
    assert [r["dataset_version_id"] for r in training_requests(GOOD, [older])] == [GOOD["dataset_version_id"]]
    with pytest.raises(ParamsError, match="asset event: pipeline"):
        training_requests({}, [GOOD, {"pipeline": "Bad Name", "dataset_version_id": GOOD["dataset_version_id"]}])


def test_the_newest_dataset_large_enough_is_chosen() -> None:
    older = {"pipeline": "lending_club", "dataset_version_id": "ds-" + "a" * 16}
    newest = {"pipeline": "lending_club", "dataset_version_id": "ds-" + "b" * 16}
    rows = {older["dataset_version_id"]: 5000, newest["dataset_version_id"]: 10}
    asked = []

    def rows_of(pipeline: str, version: str) -> tuple[int, int]:
        asked.append((pipeline, version))
        return rows[version], 1000

    chosen = choose_training_request({"pipeline": None}, [older, newest], rows_of)
    assert chosen["dataset_version_id"] == older["dataset_version_id"] and chosen["source"] == "asset event"
    assert asked == [("lending_club", newest["dataset_version_id"]), ("lending_club", older["dataset_version_id"])]
    assert choose_training_request(GOOD, [], lambda p, v: (1000, 1000))["source"] == "conf"  # exactly enough


def test_no_dataset_large_enough_is_a_reason_not_an_error() -> None:
    reason = choose_training_request(GOOD, [], lambda p, v: (999, 1000))
    assert reason == f"no dataset large enough to train on ({GOOD['dataset_version_id']}: 999 rows < " \
                     "training.min_rows=1000)"
    with pytest.raises(ParamsError, match="give both in conf"):  # a malformed request is still refused
        choose_training_request({}, [], lambda p, v: (0, 0))
