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

from qldbstream.app.plugins import load_handler
from qldbstream.core.errors import ConfigurationError

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


def feed_reopening(
    engine: WindowEngine, events: list[tuple[str, Event]], stored: dict[tuple[int, int], dict[str, Any]]
) -> list[Pane | Retraction]:
    """Like ``feed``, playing the handler's part: panes that leave memory are kept in ``stored``,
    and a late event's purged pane is handed back before the event."""
    out: list[Pane | Retraction] = []
    for shard, event in events:
        for bounds in engine.closed(event):
            engine.reopen(bounds, stored.get(bounds))
        engine.add(shard, event)
        out.extend(engine.advance())
        stored.update(engine.take_panes())
    return out


def test_on_time_result_then_late_corrections_then_final_then_reopened() -> None:
    engine = WindowEngine(query(allowed_lateness="30s"))
    stored: dict[tuple[int, int], dict[str, Any]] = {}
    out = feed_reopening(engine, [("s", ev(10 * S, "a#0")), ("s", ev(50 * S, "b#0"))], stored)
    assert out == []  # the watermark (50 s) has not passed the window's end (60 s)
    out = feed_reopening(engine, [("s", ev(70 * S, "c#0"))], stored)
    assert [(r[3], r[4], r[5]["n"]) for r in rows(out)] == [(1, False, 2)]  # revision 1 fires
    out = feed_reopening(engine, [("s", ev(55 * S, "d#0"))], stored)  # late, within 30 s of lateness
    assert [(r[3], r[4], r[5]["n"]) for r in rows(out)] == [(2, False, 3)]
    out = feed_reopening(engine, [("s", ev(95 * S, "e#0"))], stored)  # watermark 95 s >= 60 + 30: final
    assert [(r[0], r[3], r[4], r[5]["n"]) for r in rows(out)] == [(0, 2, True, 3)]
    assert (0, M) in stored and engine.open_windows == 1  # purged: its state left memory
    out = feed_reopening(engine, [("s", ev(20 * S, "f#0"))], stored)  # beyond lateness: reopened
    assert [(r[0], r[3], r[4], r[5]["n"]) for r in rows(out)] == [(0, 3, True, 4)]
    out = feed_reopening(engine, [("s", ev(20 * S, "f#0"))], stored)  # a redelivery changes nothing
    assert out == []
    assert engine.counters == {
        "events": 6,
        "duplicates": 1,
        "late_updates": 2,
        "reopened": 2,
        "dropped_late": 0,
    }
    # without the handler's stored panes the engine cannot count it: it says so
    alone = WindowEngine(query(allowed_lateness="30s"))
    feed(alone, [("s", ev(10 * S, "a#0")), ("s", ev(95 * S, "e#0")), ("s", ev(20 * S, "f#0"))])
    assert alone.counters["dropped_late"] == 1


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


def test_completed_ends_the_input_and_a_later_shard_tail_corrects_the_window() -> None:
    engine = WindowEngine(query())
    stored: dict[tuple[int, int], dict[str, Any]] = {}
    feed_reopening(engine, [("s1", ev(10 * S, "a#0")), ("s2", ev(20 * S, "b#0"))], stored)
    engine.complete("s1")  # QLDB wrote everything: every window fires, s2's tail may still come
    assert [(r[5]["n"], r[3], r[4]) for r in rows(engine.advance())] == [(2, 1, True)]
    out = feed_reopening(engine, [("s2", ev(30 * S, "c#0"))], stored)
    assert [(r[5]["n"], r[3], r[4]) for r in rows(out)] == [(3, 2, True)]
    assert engine.counters["dropped_late"] == 0 and engine.counters["reopened"] == 1


def test_completed_before_min_shards_still_ends_the_input() -> None:
    engine = WindowEngine(query(), min_shards=2)
    stored: dict[tuple[int, int], dict[str, Any]] = {}
    feed_reopening(engine, [("s1", ev(10 * S, "a#0"))], stored)
    assert engine.advance() == [] and engine.watermark() is None  # one shard of two seen
    engine.complete("s1")
    assert [(r[5]["n"], r[4]) for r in rows(engine.advance())] == [(1, True)]
    out = feed_reopening(engine, [("s2", ev(20 * S, "b#0"))], stored)  # s2 read after it: corrected
    assert [(r[5]["n"], r[4]) for r in rows(out)] == [(2, True)] and engine.counters["dropped_late"] == 0


def test_stored_panes_are_forgotten_keep_closed_behind_the_newest_event() -> None:
    engine = WindowEngine(query(), keep_closed_ms=5 * M)
    stored: dict[tuple[int, int], dict[str, Any]] = {}
    feed_reopening(engine, [("s", ev(10 * S, "a#0")), ("s", ev(2 * M + 1, "b#0"))], stored)
    assert engine.closed(ev(20 * S, "x#0")) == [(0, M)]  # stored: a late event reopens it
    assert engine.expire() == []
    feed_reopening(engine, [("s", ev(6 * M + 1, "c#0"))], stored)
    assert engine.expire() == [(0, M)]  # more than 5 minutes behind the newest event
    out = feed_reopening(engine, [("s", ev(20 * S, "x#0"))], stored)
    assert out == [] and engine.counters["dropped_late"] == 1
    out = feed_reopening(engine, [("s", ev(4 * M, "y#0"))], stored)  # never had an event: starts empty
    assert [(r[0], r[3], r[5]["n"]) for r in rows(out)] == [(4 * M, 1, 1)]


def test_progress_from_a_closed_lambda_window_fires_what_it_passes() -> None:
    engine = WindowEngine(query())
    feed(engine, [("s", ev(10 * S, "a#0"))])
    assert engine.advance() == []
    engine.progress("s", 60 * S)  # Lambda closed the shard's processing window at 60 s
    assert [(r[0], r[5]["n"]) for r in rows(engine.advance())] == [(0, 1)]


def test_parts_hand_out_every_changed_pane_with_a_growing_revision() -> None:
    engine = WindowEngine(query(group_by="account"), parts=True)
    feed(engine, [("s", ev(10 * S, "a#0", group="A")), ("s", ev(20 * S, "b#0", group="B"))])
    (first,) = engine.take_panes().values()
    assert first["revision"] == 1 and not first["final"] and len(first["windows"]) == 2
    assert engine.take_panes() == {}  # nothing changed
    feed(engine, [("s", ev(30 * S, "c#0", group="A"))])
    assert [p["revision"] for p in engine.take_panes().values()] == [2]
    engine.drain()
    (last,) = engine.take_panes().values()
    assert last["revision"] == 3 and last["final"] and engine.open_windows == 0


def test_merging_parts_counts_an_event_in_two_parts_once() -> None:
    from qldbstream_handlers.analytics import merge_parts

    a, b = WindowEngine(query(), parts=True), WindowEngine(query(), parts=True)
    feed(a, [("s1", ev(1 * S, "x#0", "A", "1.10")), ("s1", ev(2 * S, "y#0", "B", "2.20"))])
    feed(b, [("s2", ev(3 * S, "y#0", "B", "2.20")), ("s2", ev(4 * S, "z#0", "C", "3.30"))])
    parts = [next(iter(a.take_panes().values())), next(iter(b.take_panes().values()))]
    pane = merge_parts(query(), (0, M), parts)
    (row,) = pane.rows
    assert row.values["n"] == 3 and row.values["accounts"] == 3 and row.values["total"] == Decimal("6.60")
    assert row.revision == 2 and not row.final and row.shard is None


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


def test_scope_auto_is_shard_in_lambda_and_keep_closed_is_a_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    cfg = parse_settings({"preset": "transaction_velocity", "keep_closed": "2h"})
    assert cfg.options.scope == "auto" and cfg.options.resolved_scope() == "stream"
    assert cfg.options.keep_closed_ms == 2 * 60 * M
    assert AnalyticsHandler({"preset": "transaction_velocity", "sinks": "none"}).scope == "stream"
    assert AnalyticsHandler.late_policy == "deliver-late"
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "qldbstream")
    assert AnalyticsHandler({"preset": "transaction_velocity", "sinks": "none"}).scope == "shard"
    assert (
        AnalyticsHandler({"preset": "transaction_velocity", "scope": "stream", "sinks": "none"}).scope
        == "stream"
    )
    for bad in ({"keep_closed": "forever"}, {"scope": "cluster"}):
        with pytest.raises(ConfigurationError):
            parse_settings({"preset": "transaction_velocity", **bad})
