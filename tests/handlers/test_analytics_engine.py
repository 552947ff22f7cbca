"""The analytics window engine, queries and settings on hand-made events: windows, watermarks,
lateness, sessions, de-duplication and state round trips. Pure: no I/O, no clock."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from qldbstream_handlers.analytics import (
    TRANSACTION_VELOCITY,
    AnalyticsHandler,
    Event,
    Hopping,
    Pane,
    Query,
    Retraction,
    Session,
    Tumbling,
    WindowEngine,
    avg_of,
    count,
    count_distinct,
    max_of,
    min_of,
    parse_aggregates,
    parse_settings,
    parse_where,
    parse_window,
    sum_of,
)

from qldbstream.errors import ConfigurationError
from qldbstream.plugins import load_handler

S = 1000
M = 60 * S
AGGS = (
    count("n"),
    count_distinct("accounts", "account"),
    sum_of("total", "amount"),
    avg_of("mean", "amount"),
    min_of("low", "amount"),
    max_of("high", "amount"),
)


def query(window: Any = None, **kw: Any) -> Query:
    return Query("q", window or Tumbling("1m"), AGGS, **kw)


def ev(t: int, key: str, account: str = "A", amount: str = "1", group: str | None = None) -> Event:
    amt = Decimal(amount)
    return Event(t, key, group, (None, account, amt, amt, amt, amt))


def feed(engine: WindowEngine, events: list[tuple[str, Event]]) -> list[Pane | Retraction]:
    out: list[Pane | Retraction] = []
    for shard, event in events:
        engine.add(shard, event)
        out.extend(engine.advance())
    return out


def rows(emissions: list[Pane | Retraction]) -> list[tuple[int, int, str | None, int, bool, dict[str, Any]]]:
    return [
        (r.window_start, r.window_end, r.group, r.revision, r.final, dict(r.values))
        for e in emissions
        if isinstance(e, Pane)
        for r in e.rows
        if r.group in e.changed
    ]


# --- windows and aggregates ----------------------------------------------------------------


def test_window_assignment_tumbling_hopping_and_parsing() -> None:
    assert Tumbling("1m").assign(61 * S) == [(M, 2 * M)]
    assert Hopping("3m", "1m").assign(61 * S) == [(-M, 2 * M), (0, 3 * M), (M, 4 * M)]
    assert parse_window("hopping:5m/1m") == Hopping(5 * M, M)
    assert parse_window(" session:90s ") == Session(90 * S)
    assert parse_window("tumbling:500ms").spec() == "tumbling:500ms"
    for bad in ("tumbling", "hopping:5m", "hopping:5m/2m", "session:-1m", "sliding:1m", "tumbling:0s"):
        with pytest.raises(ConfigurationError):
            parse_window(bad)


def test_every_aggregate_and_sql_null_semantics() -> None:
    engine = WindowEngine(query())
    events = [ev(1 * S, "a#0", "A", "10.50"), ev(2 * S, "b#0", "B", "-2"), ev(3 * S, "c#0", "A", "4.25")]
    feed(engine, [("s", e) for e in events])
    engine.add("s", Event(4 * S, "d#0", None, (None, None, None, None, None, None)))  # nulls: only count
    (pane,) = engine.drain()
    assert isinstance(pane, Pane)
    values = dict(pane.rows[0].values)
    assert values == {
        "n": 4,
        "accounts": 2,
        "total": Decimal("12.75"),
        "mean": Decimal("4.25"),
        "low": Decimal("-2"),
        "high": Decimal("10.50"),
    }
    assert parse_aggregates("n=count, t = sum(data.amount)")[1].field == "data.amount"
    for bad in ("n=count(x)", "t=sum", "t=median(x)", "n=count,n=count", "", "9=count"):
        with pytest.raises(ConfigurationError):
            parse_aggregates(bad)


# --- watermark, firing, lateness ---------------------------------------------------------


def test_on_time_result_then_late_corrections_then_final_then_dropped() -> None:
    engine = WindowEngine(query(allowed_lateness="30s"))
    out = feed(engine, [("s", ev(10 * S, "a#0")), ("s", ev(50 * S, "b#0"))])
    assert out == []  # the watermark (50 s) has not passed the window's end (60 s)
    out = feed(engine, [("s", ev(70 * S, "c#0"))])
    assert [(r[3], r[4], r[5]["n"]) for r in rows(out)] == [(1, False, 2)]  # revision 1 fires
    out = feed(engine, [("s", ev(55 * S, "d#0"))])  # late, within 30 s of lateness
    assert [(r[3], r[4], r[5]["n"]) for r in rows(out)] == [(2, False, 3)]
    out = feed(engine, [("s", ev(95 * S, "e#0"))])  # watermark 95 s >= 60 + 30: purged, final
    assert [(r[0], r[3], r[4], r[5]["n"]) for r in rows(out)] == [(0, 2, True, 3)]
    out = feed(engine, [("s", ev(20 * S, "f#0"))])  # beyond lateness: dropped
    assert out == []
    assert engine.counters == {"events": 5, "duplicates": 0, "late_updates": 1, "dropped_late": 1}


def test_out_of_orderness_delays_firing_so_disorder_is_not_late() -> None:
    engine = WindowEngine(query(out_of_orderness="20s"))
    out = feed(engine, [("s", ev(50 * S, "a#0")), ("s", ev(70 * S, "b#0")), ("s", ev(45 * S, "c#0"))])
    assert out == []  # watermark 70 - 20 = 50 s < 60 s
    out = feed(engine, [("s", ev(81 * S, "d#0"))])
    assert [(r[0], r[3], r[4], r[5]["n"]) for r in rows(out)] == [(0, 1, True, 2)]
    assert engine.counters["late_updates"] == 0


def test_redelivered_events_are_counted_once() -> None:
    engine = WindowEngine(query(allowed_lateness="1m"))
    events = [("s", ev(t * S, f"d{t}#0")) for t in (1, 2, 61, 2, 1, 62, 121)]
    out = feed(engine, events)  # at 121 s: [0, 60 s) becomes final, [60 s, 120 s) fires
    assert [(r[0], r[3], r[4], r[5]["n"]) for r in rows(out)] == [
        (0, 1, False, 2),
        (0, 1, True, 2),
        (M, 1, False, 2),
    ]
    assert engine.counters["duplicates"] == 2
    final = engine.drain()
    assert [(r[0], r[5]["n"], r[4]) for r in rows(final)] == [(M, 2, True), (2 * M, 1, True)]


def test_hopping_windows_emit_one_pane_per_window_with_every_group() -> None:
    engine = WindowEngine(query(Hopping("2m", "1m"), group_by="account"))
    out = feed(engine, [("s", ev(30 * S, "a#0", "A", group="A")), ("s", ev(90 * S, "b#0", "B", group="B"))])
    out += engine.drain()
    got = sorted((r[0], r[1], r[2], r[5]["n"]) for r in rows(out))
    assert got == [(-M, M, "A", 1), (0, 2 * M, "A", 1), (0, 2 * M, "B", 1), (M, 3 * M, "B", 1)]
    assert all(isinstance(p, Pane) and len({r.window_start for r in p.rows}) == 1 for p in out)


def test_sessions_merge_and_a_late_bridge_retracts_the_emitted_sessions() -> None:
    engine = WindowEngine(query(Session("30s"), group_by="account", allowed_lateness="5m"))
    out = feed(
        engine,
        [
            ("s", ev(0, "a#0", group="A")),
            ("s", ev(20 * S, "b#0", group="A")),  # same session: [0, 50 s)
            ("s", ev(70 * S, "c#0", group="A")),  # a new session [70 s, 100 s)
            ("s", ev(200 * S, "x#0", group="B")),  # watermark 200 s: both A sessions fire
        ],
    )
    assert [(r[0], r[1], r[3], r[5]["n"]) for r in rows(out)] == [(0, 50 * S, 1, 2), (70 * S, 100 * S, 1, 1)]
    out = feed(engine, [("s", ev(45 * S, "d#0", group="A"))])  # late: bridges both sessions
    retracted = sorted((r.window_start, r.window_end) for r in out if isinstance(r, Retraction))
    assert retracted == [(0, 50 * S), (70 * S, 100 * S)]
    assert [(r[0], r[1], r[3], r[5]["n"]) for r in rows(out)] == [(0, 100 * S, 2, 4)]
    out = feed(engine, [("s", ev(45 * S, "d#0", group="A"))])  # a redelivery changes nothing
    assert out == [] and engine.counters["duplicates"] == 1


def test_shards_mode_waits_for_the_slowest_shard_and_min_shards() -> None:
    engine = WindowEngine(query(), min_shards=2)
    assert feed(engine, [("s1", ev(10 * S, "a#0")), ("s1", ev(200 * S, "b#0"))]) == []  # one shard seen
    out = feed(engine, [("s2", ev(30 * S, "c#0"))])
    assert out == [] and engine.watermark() == 30 * S  # min(200, 30)
    out = feed(engine, [("s2", ev(61 * S, "d#0"))])
    assert [(r[0], r[5]["n"]) for r in rows(out)] == [(0, 2)]  # s2's event at 30 s was not late
    engine.release("s2")  # s2 ended: s1 alone holds the watermark
    assert [r[0] for r in rows(engine.advance())] == [M]
    assert engine.counters["dropped_late"] == 0


def test_global_mode_uses_the_newest_event_anywhere() -> None:
    engine = WindowEngine(query(), watermark="global")
    feed(engine, [("s1", ev(10 * S, "a#0")), ("s1", ev(200 * S, "b#0"))])
    feed(engine, [("s2", ev(30 * S, "c#0"))])  # window [0, 60 s) is already purged
    assert engine.counters["dropped_late"] == 1


def test_completed_on_every_shard_read_ends_the_input() -> None:
    engine = WindowEngine(query())
    feed(engine, [("s1", ev(10 * S, "a#0")), ("s2", ev(20 * S, "b#0"))])
    engine.complete("s1")
    assert engine.advance() == []  # s2 still holds the watermark
    engine.complete("s2")
    assert [(r[5]["n"], r[4]) for r in rows(engine.advance())] == [(2, True)]


def test_completed_on_one_shard_waits_for_min_shards() -> None:
    engine = WindowEngine(query(), min_shards=2)
    feed(engine, [("s1", ev(10 * S, "a#0"))])
    engine.complete("s1")  # s1 is done before s2 delivered anything: nothing may close yet
    assert engine.advance() == [] and engine.watermark() is None
    out = feed(engine, [("s2", ev(20 * S, "b#0"))])
    assert out == [] and engine.counters["dropped_late"] == 0
    engine.release("s2")  # s2 ended too: every shard read has completed or gone
    assert [(r[5]["n"], r[4]) for r in rows(engine.advance())] == [(2, True)]


def test_state_round_trip_midway_gives_the_same_emissions() -> None:
    q = query(Session("40s"), group_by="account", allowed_lateness="1m")
    events = [
        ("s", ev(t * S, f"k{i}#0", group="AB"[i % 2])) for i, t in enumerate((5, 30, 61, 20, 150, 90, 300))
    ]
    whole = WindowEngine(q)
    expected = feed(whole, events) + whole.drain()
    first = WindowEngine(q)
    got = feed(first, events[:4])
    second = WindowEngine(q)
    second.load_state(first.to_state())
    got += feed(second, events[4:]) + second.drain()
    assert got == expected
    with pytest.raises(ValueError, match="another definition"):
        WindowEngine(query()).load_state(first.to_state())


# --- queries and settings ----------------------------------------------------------------


def test_where_expressions() -> None:
    doc = {"type": "CARD_PAYMENT", "amount": Decimal("12.50"), "channel": "online", "nested": {"x": 3}}
    assert parse_where("type = CARD_PAYMENT and amount >= 12.5")(doc)
    assert not parse_where("amount > 12.50")(doc)
    assert parse_where("channel in (online, 'mobile') and nested.x < 4")(doc)
    assert parse_where("channel not in (branch) and merchant = null and type != null")(doc)
    assert not parse_where("missing > 1")(doc)
    assert not parse_where("type > 5")(doc)  # a string is not a number: false, not an error
    for bad in ("type", "type ~ 1", "type = 1 or x = 2", "channel in online", "= 1"):
        with pytest.raises(ConfigurationError):
            parse_where(bad)


def test_settings_preset_and_declarative_query() -> None:
    velocity = parse_settings({"preset": "transaction_velocity", "sinks": "none"})
    assert velocity.query == TRANSACTION_VELOCITY and velocity.sinks == ()
    config = parse_settings(
        {
            "name": "big_wires",
            "tables": "Transactions",
            "window": "hopping:1h/10m",
            "aggregates": "n=count, total=sum(amount)",
            "group_by": "accountId",
            "where": "type = WIRE_OUT",
            "allowed_lateness": "5m",
            "watermark": "global",
            "sinks": "emf,parquet",
            "parquet_path": "/tmp/x",
        }
    )
    q = config.query
    assert (q.name, q.window, q.group_by, q.lateness_ms, q.tables) == (
        "big_wires",
        Hopping("1h", "10m"),
        "accountId",
        300_000,
        frozenset({"Transactions"}),
    )
    assert q.where is not None and q.where({"type": "WIRE_OUT"}) and config.options.watermark == "global"
    bad_settings: list[dict[str, str]] = [
        {"window": "tumbling:1m"},
        {"preset": "nope"},
        {"preset": "transaction_velocity", "colour": "blue"},
        {"preset": "transaction_velocity", "sinks": "dynamodb"},
        {"preset": "transaction_velocity", "sinks": "kafka"},
        {"preset": "transaction_velocity", "state": "redis:x"},
        {"preset": "transaction_velocity", "scope": "planet"},
        {"preset": "transaction_velocity", "min_shards": "two"},
        {"preset": "transaction_velocity", "operations": "delete"},
    ]
    for settings in bad_settings:
        with pytest.raises(ConfigurationError):
            parse_settings(settings)


def test_plugin_loads_from_settings_and_refuses_bad_ones() -> None:
    handler = load_handler(
        "qldbstream_handlers.analytics:AnalyticsHandler", {"preset": "transaction_velocity", "sinks": "none"}
    )
    assert isinstance(handler, AnalyticsHandler) and handler.queries == (TRANSACTION_VELOCITY,)
    with pytest.raises(ConfigurationError, match="unknown settings"):
        load_handler(
            "qldbstream_handlers.analytics:AnalyticsHandler", {"preset": "transaction_velocity", "x": "1"}
        )
    with pytest.raises(ConfigurationError, match="unique names"):
        AnalyticsHandler(queries=[TRANSACTION_VELOCITY, TRANSACTION_VELOCITY])
