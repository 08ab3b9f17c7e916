"""A worker's own log records, handed to its supervisor whole.

A worker's stderr is a pipe its supervisor reads and logs line by line (`tree.output`).
Formatted by loguru in the worker, a `self.log` line would be stamped twice (once here,
once by the supervisor) and, as JSON, nested inside the supervisor's record. So the worker
writes each record as one line: a record-separator byte (0x1E, which no text line starts
with) and a JSON object of the record's level, message, extra fields and exception. The
supervisor logs it with that level and those fields, tagged with the child's path: one
timestamp, one level, and with ``--log-json`` the worker's fields as fields.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["MARK", "prepare", "to_supervisor", "parse"]

MARK = "\x1e"

# The worker's handler, added once in the supervisor (see `prepare`), and whether this
# process is a worker (the handler passes records only then).
_handler: int | None = None
_in_worker = False


def _only_in_worker(record: Any) -> bool:
    return _in_worker


def prepare() -> None:
    """Add the workers' handler in the supervisor, once, before it forks any worker.

    loguru's `add` costs 4-9 ms (it builds an exception formatter, which reads every
    sysconfig path); paid in each forked worker it was most of a restart. Added here, it
    passes nothing in the supervisor and is switched on by `to_supervisor` in the child.
    """
    global _handler
    from loguru import logger

    if _handler is None or _handler not in _handler_ids(logger):  # none yet, or removed
        _handler = logger.add(_emit, level="DEBUG", format="{message}",
                              filter=_only_in_worker, backtrace=False, diagnose=False)


def to_supervisor() -> None:
    """Send this process's loguru records to its supervisor (call in the worker, once
    its stderr is the supervisor's pipe): the handler `prepare` added is switched on,
    every other handler (the supervisor's own) removed."""
    global _in_worker
    from loguru import logger

    # Not `remove()`: it would take ours too, and a new `add` is the cost avoided.
    handlers = _handler_ids(logger)
    if _handler is None or _handler not in handlers:
        logger.remove()
        logger.add(_emit, level="DEBUG", format="{message}", backtrace=False, diagnose=False)
        return
    _in_worker = True
    for handler in handlers:
        if handler != _handler:
            logger.remove(handler)


def _handler_ids(logger: Any) -> list[int]:
    # loguru has no public list of its handlers: read its core's (an empty list if that
    # ever changes, and `to_supervisor` then takes the slow way, remove all and add).
    return list(getattr(getattr(logger, "_core", None), "handlers", None) or ())


def _emit(message: Any) -> None:
    record = message.record
    fields = {"level": record["level"].name, "message": record["message"],
              "extra": {k: v for k, v in record["extra"].items() if k != "child"}}
    if record["exception"] is not None:
        import traceback

        kind, value, tb = record["exception"]
        fields["exception"] = "".join(traceback.format_exception(kind, value, tb))
    line = (MARK + json.dumps(fields, default=repr) + "\n").encode()
    # One write: whole records, even with the serving thread and run() both logging.
    os.write(2, line)


def parse(text: str) -> dict[str, Any] | None:
    """The record a worker wrote on `text` (a line of its stderr), or None for any other
    line (plain output is logged as it is)."""
    if not text.startswith(MARK):
        return None
    try:
        fields = json.loads(text[1:])
    except ValueError:
        return None
    return fields if isinstance(fields, dict) and "message" in fields else None
