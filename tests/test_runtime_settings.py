"""Per-transport settings must name transports the runtime has (a typo would otherwise
be ignored without a word)."""

from __future__ import annotations

from pathlib import Path

import pytest

from surelay import RetryPolicy, Runtime, RuntimeConfig
from tests.helpers import Recorder


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("retry_per_transport", {"smss": RetryPolicy(max_attempts=1)}),
        ("ack_timeout_per_transport", {"smss": 1.0}),
        ("concurrency_per_transport", {"smss": 2}),
    ],
)
def test_a_setting_for_an_unknown_transport_is_refused_at_open(
    tmp_path: Path, setting: str, value: object
) -> None:
    config = RuntimeConfig(**{setting: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"{setting} names transport\(s\) 'smss'.*has: sms"):
        Runtime.open(tmp_path / "d", transports={"sms": Recorder()}, config=config)
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_settings_for_the_transports_given_are_taken(tmp_path: Path) -> None:
    config = RuntimeConfig(
        ack_timeout_per_transport={"sms": 1.0}, concurrency_per_transport={"sms": 2}
    )
    with Runtime.open(tmp_path, transports={"sms": Recorder()}, config=config) as rt:
        assert rt.health()["engines"]["sms"]["limit"] == 2
