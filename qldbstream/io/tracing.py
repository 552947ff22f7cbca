"""Optional OpenTelemetry spans around pipeline stages and handler calls.

When ``opentelemetry-api`` is installed (``pip install 'qldbstream[otel]'``) and the process has
a tracer provider configured, :func:`span` opens a real span named ``qldbstream.<name>``;
otherwise it is a no-op that costs one function call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

__all__ = ["span"]

try:
    from opentelemetry import trace as _trace

    _tracer: Any = _trace.get_tracer("qldbstream")
except ImportError:  # the optional dependency is not installed
    _tracer = None


@contextmanager
def _real_span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    with _tracer.start_as_current_span(f"qldbstream.{name}", attributes=attributes) as s:
        yield s


def span(name: str, **attributes: Any) -> Any:
    """``with span("handler", handler="audit", shard="..."):`` - a span, or nothing."""
    if _tracer is None:
        return nullcontext()
    clean = {k: v for k, v in attributes.items() if isinstance(v, str | int | float | bool)}
    return _real_span(name, clean)
