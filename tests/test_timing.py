"""Interleaved medians: every step runs as often, in alternating order, and the median is the median."""

import pytest

from minibayeslora.timing import interleaved_medians


def test_interleaved_medians_alternate_and_take_the_median():
    calls, times = [], {"a": iter([9.0, 9.0, 1.0, 5.0, 3.0]), "b": iter([9.0, 9.0, 2.0, 2.0, 100.0])}

    def step(name):
        def run():
            calls.append(name)
            return next(times[name])
        return run

    medians = interleaved_medians({"a": step("a"), "b": step("b")}, repeats=3, warmup=2)
    assert medians == {"a": 3.0, "b": 2.0}                      # the warm-up draws (9.0) are not counted
    assert calls == ["a", "b", "a", "b", "a", "b", "b", "a", "a", "b"]   # forward, reversed, forward
    with pytest.raises(ValueError, match="repeats"):
        interleaved_medians({"a": step("a")}, repeats=0)
