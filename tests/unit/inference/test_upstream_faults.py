"""The emulator's fault syntax."""

from __future__ import annotations

import pytest

from parapet.upstream import Fault, parse_fault
from parapet.upstream.faults import split_model


def test_specs_parse_and_later_ones_win() -> None:
    assert split_model("gpt;status=429;retry_after=1.5") == ("gpt", "status=429;retry_after=1.5")
    fault = parse_fault("status=429;retry_after=1.5;times=2", "retry_after=3;omit_usage;reply=hi+there")
    assert fault == Fault(status=429, retry_after=3.0, times=2, omit_usage=True, reply="hi there")
    assert fault.is_error
    assert parse_fault("") == Fault()
    assert parse_fault("reset").reset
    assert parse_fault("error_after=2;error_type=rate_limit_error") == Fault(
        error_after=2, error_type="rate_limit_error"
    )


@pytest.mark.parametrize("spec", ["bogus=1", "status", "status=abc", "error_after=x", "error_type"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_fault(spec)
