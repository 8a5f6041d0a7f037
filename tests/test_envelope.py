"""The fast constructor makes the same Envelope the dataclass does."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest
from hypothesis import given

from surelay.envelope import Envelope, checked_envelope

from .storage.builders import envelopes


@given(envelopes)
def test_checked_envelope_equals_the_dataclass_built_one(envelope: Envelope) -> None:
    assert isinstance(envelope.headers, MappingProxyType)
    made = checked_envelope(*(getattr(envelope, f.name) for f in dataclasses.fields(Envelope)))
    assert type(made) is Envelope
    assert made == envelope
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.attempt = 2  # type: ignore[misc]
