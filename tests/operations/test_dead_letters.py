"""The store-level dead-letter operations the API, the CLI and the console share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from surelay.operations.dead_letters import archive, purge, record_replay
from surelay.storage import Store
from tests.storage.builders import dead_letter

DAY = 86_400.0
NOW = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "d") as opened:
        records = [
            dead_letter(NOW - 3 * DAY, message_id="a", transport="sms", reason_class="permanent"),
            dead_letter(NOW - 2 * DAY, message_id="b", transport="mail", reason_class="permanent"),
            dead_letter(NOW - 1, message_id="c", transport="sms", reason_class="expired"),
        ]
        opened.write(lambda txn: [opened.dead_letters.insert(txn, r) for r in records]).result()
        yield opened


def statuses(store: Store) -> dict[str, str]:
    with store.read() as txn:
        return {r.message_id: r.status for r in store.dead_letters.matching(txn, status=None)}


def test_a_replay_recorded_without_an_owner_is_pending_for_any_runtime(store: Store) -> None:
    request = record_replay(store, ids=None, filters={"transport": "sms"}, rate=5.0, now=NOW)
    with store.read() as txn:
        assert store.replay_requests.get(txn, request.id) == request
    assert (request.status, request.owner, request.ids) == ("pending", None, None)
    assert dict(request.filters) == {"transport": "sms"} and request.rate == 5.0


def test_a_replay_recorded_for_a_runtime_is_running_there_and_ids_drop_filters(
    store: Store,
) -> None:
    request = record_replay(
        store, ids=("x", "y"), filters={"transport": "sms"}, rate=None, now=NOW, owner=3
    )
    assert (request.status, request.owner, request.ids) == ("running", 3, ("x", "y"))
    assert dict(request.filters) == {}


def test_archive_by_ids_or_by_filters_in_one_write(store: Store) -> None:
    with store.read() as txn:
        ids = {r.message_id: r.id for r in store.dead_letters.matching(txn)}
    assert archive(store, [ids["a"], "no-such-id"]) == 1
    assert archive(store, filters={"transport": "sms"}) == 1  # c (a is archived already)
    assert statuses(store) == {"a": "archived", "b": "dead", "c": "archived"}
    assert archive(store, ids["b"]) == 1  # one id given as a str


def test_purge_by_status_and_age(store: Store) -> None:
    archive(store, filters={})
    assert purge(store, status="archived", older_than=DAY, now=NOW) == 2  # a and b
    assert statuses(store) == {"c": "archived"}
    with pytest.raises(ValueError, match="older_than must be seconds >= 0 or None, got -1"):
        purge(store, status="archived", older_than=-1, now=NOW)
