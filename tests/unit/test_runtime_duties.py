"""What every runtime owes its handlers and metrics (qldbstream.pipeline.runtime_duties)."""

from __future__ import annotations

import logging

import pytest

from qldbstream.api.handler import Handler
from qldbstream.pipeline.runtime_duties import flush_metrics, gauge_lag, iterator_age_ms, release_shard

LOG = logging.getLogger("qldbstream.test.duties")


class Heard(Handler):
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.released: list[str] = []

    def shard_released(self, shard_id: str) -> None:
        self.released.append(shard_id)
        if self.fail:
            raise RuntimeError("the sink is gone")


class Gauges:
    def __init__(self, fail_flush: bool = False) -> None:
        self.gauges: list[tuple[str, float, dict[str, str]]] = []
        self.flushed = 0
        self.fail_flush = fail_flush

    def incr(self, name: str, value: float = 1, **dimensions: str) -> None:
        pass

    def gauge(self, name: str, value: float, **dimensions: str) -> None:
        self.gauges.append((name, value, dimensions))

    def observe(self, name: str, value: float, **dimensions: str) -> None:
        pass

    def flush(self) -> None:
        self.flushed += 1
        if self.fail_flush:
            raise ConnectionError("stdout closed")


def test_every_handler_hears_the_release_even_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    first, broken, last = Heard("first"), Heard("broken", fail=True), Heard("last")
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        release_shard([first, broken, last], "shard-1", LOG)
    assert first.released == broken.released == last.released == ["shard-1"]
    assert "handler broken failed in shard_released(shard-1)" in caplog.text


def test_flushing_the_metrics_never_fails(caplog: pytest.LogCaptureFixture) -> None:
    ok, broken = Gauges(), Gauges(fail_flush=True)
    flush_metrics(ok, LOG)
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        flush_metrics(broken, LOG)
    assert ok.flushed == 1 and broken.flushed == 1 and "flushing metrics failed" in caplog.text
    flush_metrics(object(), LOG)  # type: ignore[arg-type]  # a backend without flush: nothing to do


def test_the_lag_gauges_are_set_when_known() -> None:
    metrics = Gauges()
    gauge_lag(metrics, "s", 1200, iterator_age_ms(now=100.0, arrival=98.5))
    gauge_lag(metrics, "s", None, None)  # unknown: nothing is set
    assert metrics.gauges == [
        ("stream_lag_ms", 1200.0, {"shard": "s"}),
        ("iterator_age_ms", 1500.0, {"shard": "s"}),
    ]


@pytest.mark.parametrize(
    ("now", "arrival", "age"), [(10.0, 9.75, 250.0), (10.0, 10.0, 0.0), (10.0, 11.0, 0.0)]
)
def test_the_iterator_age_is_never_negative(now: float, arrival: float, age: float) -> None:
    assert iterator_age_ms(now, arrival) == age  # a clock behind the record's arrival: 0
