"""Finding handler plugins: entry points in the ``qldbstream.handlers`` group, or ``module:attribute``.

A plugin is installed when a distribution declares it::

    [project.entry-points."qldbstream.handlers"]
    audit = "qldbstream_handlers.audit:router"

and active only when configured (``QLDBSTREAM_HANDLERS=audit,mypkg.handlers:router``).
The target may be a :class:`~qldbstream.api.handler.Handler` instance (a ``Router``), a
``Handler`` subclass, or a factory; classes and factories are called with the handler's own
settings (a ``dict`` of strings, from ``QLDBSTREAM_HANDLER_<NAME>__<KEY>``) when they accept an
argument, and must raise :class:`~qldbstream.core.errors.ConfigurationError` for bad values.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from qldbstream.api.handler import Handler
from qldbstream.core.errors import ConfigurationError

__all__ = ["ENTRY_POINT_GROUP", "InstalledPlugin", "installed_plugins", "load_handler", "load_handlers"]

ENTRY_POINT_GROUP = "qldbstream.handlers"


@dataclass(frozen=True)
class InstalledPlugin:
    name: str
    target: str
    distribution: str | None


def installed_plugins() -> list[InstalledPlugin]:
    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        out.append(InstalledPlugin(ep.name, ep.value, dist))
    return sorted(out, key=lambda p: p.name)


def _resolve(spec: str) -> tuple[str, Any]:
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(f"handler {spec!r}: cannot import {module_name} ({exc})") from None
        target: Any = module
        for part in attribute.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise ConfigurationError(f"handler {spec!r}: {module_name} has no {attribute}") from None
        return attribute.split(".")[-1], target
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
    if not matches:
        known = ", ".join(p.name for p in installed_plugins()) or "none installed"
        raise ConfigurationError(f"unknown handler plugin {spec!r} (installed: {known})")
    try:
        return spec, matches[0].load()
    except Exception as exc:  # a broken plugin must not crash start-up with a traceback
        raise ConfigurationError(f"handler plugin {spec!r} failed to load: {exc!r}") from None


def load_handler(spec: str, settings: Mapping[str, str] | None = None) -> Handler:
    """Resolve one configured handler into a ready :class:`Handler` instance."""
    name, target = _resolve(spec)
    own = dict(settings or {})
    if isinstance(target, Handler):
        handler = target
        if own:
            raise ConfigurationError(f"handler {spec!r} takes no settings, got {sorted(own)}")
    elif callable(target):
        try:
            takes_settings = bool(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            takes_settings = False
        if own and not takes_settings:
            raise ConfigurationError(f"handler {spec!r} takes no settings, got {sorted(own)}")
        try:
            handler = target(own) if takes_settings else target()
        except ConfigurationError:
            raise
        except Exception as exc:
            raise ConfigurationError(f"handler {spec!r} could not be created: {exc!r}") from None
        if not isinstance(handler, Handler):
            raise ConfigurationError(
                f"handler {spec!r} gave {type(handler).__name__}, not a Handler or Router"
            )
    else:
        raise ConfigurationError(
            f"handler {spec!r} is a {type(target).__name__}, not a Handler, class or factory"
        )
    if not getattr(handler, "name", None) or handler.name == "handler":
        handler.name = name
    return handler


def load_handlers(specs: tuple[str, ...], settings: Mapping[str, Mapping[str, str]]) -> list[Handler]:
    handlers = []
    for spec in specs:
        key = spec.split(":")[-1].split(".")[-1]
        own = settings.get(spec) or settings.get(key) or settings.get(key.replace("_", "-")) or {}
        handlers.append(load_handler(spec, own))
    names = [h.name for h in handlers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(f"two active handlers share the name {duplicates[0]!r}")
    unused = (
        set(settings)
        - set(specs)
        - {h.name for h in handlers}
        - {s.split(":")[-1].split(".")[-1].replace("_", "-") for s in specs}
    )
    if unused:
        raise ConfigurationError(f"settings given for handlers that are not active: {sorted(unused)}")
    return handlers
