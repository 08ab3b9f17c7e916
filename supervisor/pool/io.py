"""The pool's links at work: opening them, reading them, and what a reply or a death means.

    open      link_of(): a socketpair end handed to the worker through the tree
              (NotRunning: the slot is down until a newer start of that worker is reported)
    read      await_reply() (a blocking caller reads its own reply when nobody else reads)
              on_ready() (the watcher reads a link nobody else is reading)
    file      _file(): blocking callers get their reply; async calls are settled; NotRun
              calls go back to the queue; capacity freed is planned again
    lose      drain() (the worker's Closing notice, or its supervisor's word that it is
              being stopped: nothing new is sent there)
              lose_link() (EOF, a broken send, a timeout: async calls in flight fail with
              WorkerCrashed, or are re-sent when idempotent; sessions on it are lost)

Functions over a `PoolCore` (as `_health` and `_requests` are over a supervisor); those
marked "(under lock)" expect the core's lock held, the others take it themselves.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

from ..client.router import NotRunning
from ..errors import (
    CallTimeout,
    CircuitOpen,
    NoSuchChild,
    WorkerCrashed,
)
from ..wire import messages as P
from .link import BUFFERED, NOT_SENT, Link, SyncCall
from .overflow import note_idle
from .sessions import lose_sessions

if TYPE_CHECKING:
    from .core import PoolCore, Slot

__all__ = ["link_of", "wake_io", "watch_progress", "close_link", "send_sync", "drain",
           "register_sync", "await_reply", "release", "on_ready", "timed_out", "lose_link",
           "presend"]

OPEN_TIMEOUT = 30.0  # seconds to get a channel from the tree (a control round trip)


def link_of(core: PoolCore, slot: Slot) -> Link | None:
    """The slot's open link, opened if needed; None when its worker is not running.

    Raises WorkerCrashed when the tree is gone, CallTimeout when it does not answer.
    """
    with core.lock:
        while True:
            link = slot.link
            if link is not None and link.closed is None and link.draining is None:
                return link
            if core.gone:
                raise WorkerCrashed("the tree is not running", path=slot.path)
            if not core.usable(slot) or slot not in core.slots:
                return None
            if not slot.opening:
                break
            core.open_cond.wait()  # another thread is opening it; share theirs
        slot.opening = True
    link = None
    try:
        link = _open(core, slot)
    finally:
        with core.lock:
            slot.opening = False
            gone = core.gone
            if link is not None and not gone:
                slot.link = link
                core.watcher.add(link)
            core.open_cond.notify_all()
    if link is not None:
        if gone:  # the tree ended while we asked: nobody else will close this one
            link.close_fds()
            raise WorkerCrashed("the tree is not running", path=slot.path)
        core.watcher.apply(link)
    return link


def _open(core: PoolCore, slot: Slot) -> Link | None:
    # Read the start count before asking: if the worker is down, a start reported
    # after this read makes the slot usable again (no lost wake-up, see `usable`).
    generation = core.app._generation_of(slot.path)
    mine, theirs = socket.socketpair()
    try:
        policy = core.app._request(P.OpenChannel(id=0, path=slot.path),
                                   fds=(theirs.fileno(),), timeout=OPEN_TIMEOUT)
    except (NotRunning, CircuitOpen):
        mine.close()
        with core.lock:
            slot.down_gen = generation
        return None
    except NoSuchChild:  # deleted behind our back (terminate_child + delete_child)
        mine.close()
        with core.lock:
            if slot in core.slots:
                core.slots.remove(slot)
            lose_sessions(core, slot, None, "was deleted")
        return None
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return Link(slot, mine, policy, generation, core.lock)


def wake_io(core: PoolCore, link: Link) -> None:
    """Bytes wait in the link's outbuf: make whoever reads it poll for writing too."""
    with core.lock:
        if link.reading:
            link.wake_reader()
        elif link.closed is None:
            core.watcher.arm(link)
    core.watcher.apply(link)


def watch_progress(core: PoolCore, link: Link) -> None:
    """Async calls went out on an idle link: check they progress (under lock)."""
    if link.call_timeout is not None and not link.progress_timer:
        link.progress_timer = True
        core.timers.call_at(link.last_progress + _allowance(link),
                            lambda: _progress_check(core, link))


def _allowance(link: Link) -> float:
    # call_timeout is per call: a map chunk of k items answers once, after k calls.
    return link.call_timeout * link.chunk


def _progress_check(core: PoolCore, link: Link) -> None:
    with core.lock:
        link.progress_timer = False
        if link.closed is not None or not link.async_count:
            return
        allowance = _allowance(link)
        if link.last_progress + allowance > time.monotonic():
            watch_progress(core, link)
            return
        # No reply for that long with async calls in flight: the worker is stuck.
        lost = lose_link(core, link, f"no reply within {allowance:g}s",
                         error=CallTimeout, row="timeout_error")
        plans = core.refresh()
    core.run(lost, plans)
    if link.policy.get("on_timeout", "restart") == "restart":
        _report_failure(core, link.slot)


def close_link(core: PoolCore, link: Link) -> None:
    """Release a dead link's fds (under lock, never while a thread reads it)."""
    if not link.fds_closed:
        core.watcher.remove(link)
        link.close_fds()


def send_sync(core: PoolCore, link: Link, data: bytes, cid: int) -> bool:
    """Write one registered frame; False when it never left (dispatch it again)."""
    try:
        status = link.write(data)
    except OSError as exc:
        with core.lock:
            link.waiting.pop(cid, None)
            link.readers -= 1
            lost = [] if link.draining else lose_link(core, link, f"send failed: {exc}")
            release(core, link)
            plans = core.refresh()
        core.watcher.apply(link)
        core.run(lost, plans)
        return False
    if status is BUFFERED:
        wake_io(core, link)
    return True


def await_reply(core: PoolCore, link: Link, entry: SyncCall, cid: int,
                deadline: float | None) -> Any:
    """The reply to `cid` (registered with `register_sync`), reading the link ourselves
    when nobody else is (no thread hand-off for a lone caller). Raises WorkerCrashed,
    TimeoutError past `deadline`."""
    lock = core.lock
    with lock:
        try:
            while entry.reply is None:
                if link.closed is not None:
                    link.waiting.pop(cid, None)
                    raise WorkerCrashed(
                        f"worker {link.slot.path!r} (pid {link.pid}) died while the "
                        f"call was in flight ({link.closed})", path=link.slot.path)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    link.waiting.pop(cid, None)
                    raise TimeoutError
                if link.reading:
                    link.cond.wait(remaining)
                    continue
                _read_once(core, link, remaining)
        finally:
            link.readers -= 1
            release(core, link)
    core.watcher.apply(link)
    return entry.reply


def register_sync(core: PoolCore, link: Link, cid: int) -> SyncCall:
    """A blocking caller's entry, before its frame is written (under lock). Until it
    leaves `await_reply`, it reads the link itself: the watcher is disarmed, or it
    would race that caller for its own reply (a thread hand-off for nothing)."""
    entry = SyncCall()
    link.waiting[cid] = entry
    link.readers += 1
    core.watcher.disarm(link)  # the caller `apply`s it once out of the lock
    return entry


def release(core: PoolCore, link: Link) -> None:
    # Whoever stops reading a link hands it back to the watcher (or closes it).
    if link.reading or link.readers:
        return
    if link.closed is not None:
        close_link(core, link)
    else:
        core.watcher.arm(link)  # `apply` follows, outside the lock


def on_ready(core: PoolCore, link: Link) -> None:
    """The watcher saw an event on a link nobody was reading (its thread)."""
    with core.lock:
        if link.reading or link.closed is not None:
            return
        _read_once(core, link, 0)
        release(core, link)
    core.watcher.apply(link)


def timed_out(core: PoolCore, link: Link, method: str, limit: float) -> CallTimeout:
    exc = CallTimeout(f"call {method!r} to {link.slot.path!r} got no answer within "
                      f"{limit:.3g}s", path=link.slot.path)
    exc.policy = link.policy
    if link.policy.get("on_timeout", "restart") == "restart":
        # Its state is unknown after a call it did not finish: the supervisor replaces
        # it, and this link is finished with it.
        with core.lock:
            lost = lose_link(core, link, "a call timed out; the worker is replaced")
            plans = core.refresh()
        core.run(lost, plans)
        _report_failure(core, link.slot)
    return exc


def _report_failure(core: PoolCore, slot: Slot) -> None:
    core.app._report_timeout(slot.path)


def _read_once(core: PoolCore, link: Link, timeout: float | None) -> None:
    """Hold the reading role for one read, file what came, run the follow-ups
    (called and returning with the lock held)."""
    link.reading = True
    core.watcher.disarm(link)  # else what we read would wake the watcher too
    core.lock.release()
    try:
        core.watcher.apply(link)
        msgs, why = link.io_once(timeout)
    finally:
        core.lock.acquire()
        link.reading = False
    done, plans = _file(core, link, msgs, why)
    if done or plans:
        core.lock.release()
        try:
            core.run(done, plans)
        finally:
            core.lock.acquire()


def _file(core: PoolCore, link: Link, msgs: list[Any], why: str | None) -> tuple[list, list]:
    """File replies (under lock); returns (async settlements, send plans)."""
    slot = link.slot
    done: list[Any] = []
    again: list[Any] = []
    for msg in msgs:
        if type(msg) is P.Closing:
            drain(core, link, msg.reason)
            continue
        entry = link.waiting.pop(msg.id, None)
        if entry is None:
            continue  # its caller gave up (timeout)
        if type(entry) is SyncCall:
            entry.reply = msg
            continue
        link.async_count -= 1
        if not link.async_count:
            link.chunk = 1
        slot.load -= 1
        if type(msg) is P.NotRun:
            again.append(entry)
        else:
            done.append((entry, msg, slot.path))
    if done:
        link.last_progress = time.monotonic()
    if again:
        core.requeue(again)
    if why is None and link.draining is not None and not link.waiting:
        why = "drained"  # the leaving worker answered everything: let go of the link
    if why is not None:
        done.extend(lose_link(core, link, why))
    link.cond.notify_all()
    plans = core.refresh()
    note_idle(core, slot)
    return done, plans


def drain(core: PoolCore, link: Link, message: str) -> None:
    """The worker is leaving: send nothing more on the link (under lock)."""
    # The worker's Closing notice: it serves nothing new on any channel; what it
    # already read is answered (NotRun if not run). New calls go to the replacement.
    link.draining = message
    link.stop_writing()
    slot = link.slot
    if slot.link is link:
        slot.link = None
        slot.down_gen = link.generation
    lose_sessions(core, slot, link.pid, f"is leaving ({message})")


def lose_link(core: PoolCore, link: Link, why: str, *, error: type = WorkerCrashed,
              row: str = "connection_error") -> list[Any]:
    """The link is dead (under lock): fail or re-send its async calls; returns the
    settlements to run outside the lock. Blocking callers see `closed` themselves."""
    if link.closed is not None:
        return []
    link.closed = why
    slot = link.slot
    if slot.link is link:
        slot.link = None
    lose_sessions(core, slot, link.pid, f"died ({why})")
    failed = _in_flight_lost(core, link, why, error, row)
    link.async_count = 0
    link.cond.notify_all()
    link.interrupt()  # a reader blocked in poll returns now
    if not link.reading:
        close_link(core, link)
    return failed


def _in_flight_lost(core: PoolCore, link: Link, why: str, error: type, row: str
                    ) -> list[Any]:
    # Async calls in flight on a dead link may have run: re-sent only when idempotent
    # and the matrix row has retries left (after its delay), else failed with `error`.
    slot = link.slot
    delays = link.policy.get("retries", {}).get(row) or []
    failed, again = [], []
    for cid, entry in list(link.waiting.items()):
        if type(entry) is SyncCall:
            continue
        del link.waiting[cid]
        slot.load -= 1
        if entry.method in link.idempotent and entry.attempt <= len(delays):
            delay = delays[entry.attempt - 1]
            entry.attempt += 1
            if delay > 0:
                core.timers.call_later(delay, lambda job=entry: _resend(core, [job]))
            else:
                again.append(entry)
            continue
        if error is WorkerCrashed:
            text = (f"worker {slot.path!r} (pid {link.pid}) died while the call was "
                    f"in flight ({why})")
        else:
            text = f"call {entry.method!r} to {slot.path!r} got {why}"
        exc = error(text, path=slot.path, attempt=entry.attempt,
                    context={"operation": entry.method})
        exc.policy = link.policy
        failed.append((entry, exc, slot.path))
    if again:
        core.requeue(again)
    return failed


def _resend(core: PoolCore, jobs: list[Any]) -> None:
    with core.lock:
        core.requeue(jobs)
        plans = core.refresh()
    core.run((), plans)


def presend(core: PoolCore, link: Link, frame: bytes, cid: int, entry: SyncCall) -> None:
    """Write a queued caller's frame for it (see `Waiter`)."""
    core.watcher.apply(link)  # disarmed when the entry was registered
    try:
        status = link.write(frame)
    except OSError as exc:
        with core.lock:
            if link.waiting.pop(cid, None) is entry:
                entry.reply = NOT_SENT  # its caller dispatches it again
            lost = [] if link.draining else lose_link(core, link, f"send failed: {exc}")
            link.cond.notify_all()
            plans = core.refresh()
        core.run(lost, plans)
        return
    if status is BUFFERED:
        wake_io(core, link)
