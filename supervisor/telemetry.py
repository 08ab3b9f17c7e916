"""Telemetry: attach handlers to events raised anywhere in the tree.

Events raised inside supervisor processes travel up the tree as `Event` frames and are
delivered here, in the App's process, on the App's reader thread. Event names are tuples
that start with ``"supervisor"``; a handler attached to a prefix gets every event whose name
starts with it (``("supervisor",)`` is all of them).

    telemetry.attach("my-id", [("supervisor", "child")], fn)   # fn(event, measurements, metadata)
    telemetry.detach("my-id")

A handler that raises is detached (and the error logged), so a broken handler cannot take
down the thread that delivers replies and events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["attach", "detach", "execute", "handlers"]

Handler = Callable[[tuple[str, ...], Mapping[str, Any], Mapping[str, Any]], Any]

_lock = threading.Lock()
_handlers: dict[str, tuple[tuple[tuple[str, ...], ...], Handler]] = {}


def attach(handler_id: str, prefixes: Iterable[Iterable[str]], fn: Handler) -> None:
    """Call `fn(event, measurements, metadata)` for events under any of `prefixes`.

    Raises ValueError when `handler_id` is already attached or a prefix is empty.
    """
    normalized = tuple(tuple(p) for p in prefixes)
    if not normalized or any(not p for p in normalized):
        raise ValueError(f"expected non-empty event prefixes, got {normalized!r}")
    with _lock:
        if handler_id in _handlers:
            raise ValueError(f"telemetry handler {handler_id!r} is already attached")
        _handlers[handler_id] = (normalized, fn)


def detach(handler_id: str) -> bool:
    """Remove a handler; returns False when it was not attached."""
    with _lock:
        return _handlers.pop(handler_id, None) is not None


def handlers() -> list[str]:
    with _lock:
        return list(_handlers)


def execute(event: Iterable[str], measurements: Mapping[str, Any],
            metadata: Mapping[str, Any]) -> None:
    """Deliver one event to every handler whose prefix matches it."""
    name = tuple(event)
    with _lock:
        matching = [(hid, fn) for hid, (prefixes, fn) in _handlers.items()
                    if any(name[: len(p)] == p for p in prefixes)]
    for handler_id, fn in matching:
        try:
            fn(name, measurements, metadata)
        except Exception as exc:  # a broken handler is detached, as :telemetry does
            from loguru import logger

            logger.error("telemetry handler {!r} raised {!r} on {}; detached", handler_id,
                         exc, name)
            detach(handler_id)
