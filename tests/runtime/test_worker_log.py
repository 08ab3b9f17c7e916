"""The worker's log handler: added once in the supervisor, switched on in a forked worker."""

from __future__ import annotations

import json
import os

import pytest
from loguru import logger

from supervisor.runtime import log as worker_log

pytestmark = pytest.mark.timeout(30)


def test_the_handler_is_added_before_fork_and_only_switched_on_in_the_worker():
    # loguru's add costs milliseconds (its exception formatter reads every sysconfig
    # path): a forked worker must not pay it. The supervisor adds the handler once; it
    # passes nothing there; the worker keeps it and drops the supervisor's own handlers.
    supervisors_own = logger.add(lambda message: None)
    worker_log.prepare()
    prepared = worker_log._handler
    worker_log.prepare()  # once: a second call adds nothing
    assert worker_log._handler == prepared
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            os.dup2(write_end, 2)
            calls = []
            logger.add = lambda *args, **kwargs: calls.append(args)  # must not be needed
            worker_log.to_supervisor()
            logger.bind(disk="sda").warning("disk {} full", "sda")
            handlers = list(logger._core.handlers)
            code = 0 if handlers == [prepared] and not calls else 3
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        _, status = os.waitpid(pid, 0)
        output = os.read(read_end, 65536).decode()
        assert prepared in logger._core.handlers  # still here, passing nothing in this process
    finally:
        os.close(read_end)
        logger.remove(supervisors_own)
        logger.remove(prepared)
        worker_log._handler = None
    assert os.waitstatus_to_exitcode(status) == 0
    assert output.startswith(worker_log.MARK)
    record = json.loads(output[1:])
    assert (record["level"], record["message"], record["extra"]) == (
        "WARNING", "disk sda full", {"disk": "sda"})
