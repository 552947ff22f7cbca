"""Lambda tumbling windows: the window part of an event, and the ``window_closed`` hooks at its end.

With tumbling windows the response always carries ``state``; when Lambda closes the window
(``isFinalInvokeForWindow``, or ``isWindowTerminatedEarly``) and every record of the invocation
finished, :func:`close_window` calls each handler that defines ``window_closed(window, ctx)`` with
the final :class:`TumblingWindow`. See ``docs/lambda.md``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from qldbstream.api.handler import HandlerContext
from qldbstream.runtimes.lambda_batch import BatchFailedError, optional_text

if TYPE_CHECKING:
    from qldbstream.pipeline.batch import Pipeline

__all__ = ["TumblingWindow", "WindowClosedHandler", "close_window"]


@dataclass(frozen=True, slots=True)
class TumblingWindow:
    """The tumbling-window part of an event. ``state`` is the dict handlers see as ``ctx.window_state``."""

    start: str | None
    end: str | None
    shard_id: str | None
    event_source_arn: str | None
    state: dict[str, Any]
    #: ``isFinalInvokeForWindow``: the window is over; Lambda drops the state after this invocation
    final: bool
    #: ``isWindowTerminatedEarly``: the state outgrew 1 MB; the same window goes on with a fresh state
    terminated_early: bool

    @property
    def closing(self) -> bool:
        """Whether Lambda drops this state after the invocation (the ``window_closed`` hooks run)."""
        return self.final or self.terminated_early

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> TumblingWindow | None:
        """The event's window, or ``None`` when the event source mapping has no tumbling window."""
        if not any(k in event for k in ("window", "state", "isFinalInvokeForWindow")):
            return None
        state = event.get("state")
        if state is None:
            state = {}
        if not isinstance(state, dict):
            raise BatchFailedError(
                f"the tumbling window's 'state' is a {type(state).__name__}, not an object"
            )
        window = event.get("window")
        bounds = window if isinstance(window, Mapping) else {}
        return cls(
            optional_text(bounds.get("start")),
            optional_text(bounds.get("end")),
            optional_text(event.get("shardId")),
            optional_text(event.get("eventSourceARN")),
            state,
            event.get("isFinalInvokeForWindow") is True,
            event.get("isWindowTerminatedEarly") is True,
        )


class WindowClosedHandler(Protocol):
    """The optional hook a handler defines to act on a tumbling window's final state.

    Called at most once per closing invocation, after every record of it finished, in handler
    order; it may run again if that invocation is retried, so its effect must be idempotent
    (key it by ``window.shard_id`` and ``window.start``). A failure is retried with the
    pipeline's retry policy, then fails the invocation (Lambda retries the final invocation).
    """

    name: str

    def window_closed(self, window: TumblingWindow, ctx: HandlerContext) -> None: ...


def close_window(
    pipeline: Pipeline, window: TumblingWindow, deadline: float | None, clock: Callable[[], float]
) -> None:
    """Call every handler's ``window_closed`` hook, in order, each retried as a handler call is;
    a hook that still fails raises :class:`BatchFailedError` (Lambda retries the final invocation)."""
    metrics = pipeline.metrics
    for h in pipeline.handlers:
        hook = getattr(h, "window_closed", None)
        if not callable(hook):
            continue
        ctx = HandlerContext(
            handler=h.name,
            shard_id=window.shard_id,
            deadline=deadline,
            logger=logging.getLogger(f"qldbstream.handler.{h.name}"),
            metrics=metrics,
            window_state=window.state,
            clock=clock,
        )
        try:  # retried as the pipeline retries every handler call (within the deadline)
            pipeline.run_hook(
                h,
                functools.partial(hook, window, ctx),
                deadline=deadline,
                what="window_closed",
                shard=window.shard_id,
            )
        except Exception as exc:
            metrics.incr("window_hook_failures", handler=h.name)
            raise BatchFailedError(
                f"window_closed of {h.name} failed for shard {window.shard_id} window "
                f"{window.start}..{window.end}: {exc!r}; Lambda retries the final invocation"
            ) from exc
        metrics.incr("windows_closed", handler=h.name)
