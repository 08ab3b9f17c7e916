"""Pool sessions: a session sticks to one worker process, and is lost with it.

    first call in session "s"  ──▶ bound to the slot it was dispatched to (pid noted once
                                   the call reaches the worker)
    later calls                ──▶ only that slot; queued FIFO for it when it is busy
    that worker dies or leaves ──▶ `lost` is set (sticky): every call raises SessionLost
                                   until end_session("s"), unless on_lost="reassign"
                                   (then the session is rebound, with empty state)

The worker keeps the state (`self.session`, a dict per session id); this side only keeps
the affinity. Functions over a `PoolCore`, all under its lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ..errors import SessionLost

if TYPE_CHECKING:
    from .core import PoolCore, Slot
    from .link import Link

__all__ = ["Session", "lost_error", "bound_slot", "bind", "reached", "may_presend",
           "lose_sessions", "has_sessions"]


@attrs.define(eq=False)
class Session:
    """A session's affinity: its worker position and process; `lost` says why it is gone
    (sticky until `end_session`, so a session never silently continues elsewhere)."""

    slot: Slot
    pid: int | None = None  # None until its first call reached the worker
    lost: str | None = None


def lost_error(session: str, sess: Session) -> SessionLost:
    return SessionLost(
        f"session {session!r} is lost: its worker {sess.slot.path!r} (pid {sess.pid}) "
        f"{sess.lost}; the session's state is gone (end_session({session!r}) to reuse "
        "the id, or use on_lost='reassign')",
        path=sess.slot.path, context={"session_id": session})


def bound_slot(core: PoolCore, session: str, on_lost: str) -> Slot | None:
    """The slot the session is bound to, None when it is not bound (or was just unbound
    by reassign). Raises SessionLost for a lost session unless `on_lost` is "reassign"."""
    sess = core.sessions.get(session)
    if sess is None:
        return None
    if sess.lost is None and not core.usable(sess.slot):
        sess.lost = "is not running"
    if sess.lost is None:
        return sess.slot
    if on_lost != "reassign":
        raise lost_error(session, sess)
    del core.sessions[session]  # opted in: a fresh worker, empty state
    return None


def bind(core: PoolCore, session: str, slot: Slot) -> None:
    """The session's first call was dispatched to `slot`."""
    if session not in core.sessions:
        core.sessions[session] = Session(slot)


def reached(core: PoolCore, session: str, link: Link, on_lost: str) -> bool:
    """Check that the session's worker is still the process it started on; False when
    the call must be dispatched again (reassign). Raises SessionLost."""
    sess = core.sessions.get(session)
    if sess is None or sess.slot is not link.slot:
        return sess is None  # ended meanwhile: a new session; moved: ask again
    if sess.pid is None:
        sess.pid = link.pid
    elif sess.pid != link.pid and sess.lost is None:
        sess.lost = f"was replaced by pid {link.pid}"
    if sess.lost is None:
        return True
    if on_lost != "reassign":
        raise lost_error(session, sess)
    return False


def may_presend(core: PoolCore, session: str | None, link: Link) -> bool:
    """Whether a queued call of `session` may be written to `link` for its caller."""
    if session is None:
        return True
    sess = core.sessions.get(session)
    if sess is None or sess.slot is not link.slot or sess.lost is not None:
        return False
    if sess.pid is None:
        sess.pid = link.pid
    return sess.pid == link.pid  # else the caller finds out (SessionLost) itself


def lose_sessions(core: PoolCore, slot: Slot, pid: int | None, why: str) -> None:
    """The process `pid` of `slot` is gone (or going): its sessions are lost."""
    for sess in core.sessions.values():
        if sess.slot is slot and sess.pid == pid and sess.lost is None:
            sess.lost = why
    for waiter in core.waiters:
        if waiter.session is not None:
            waiter.cond.notify()  # a caller queued for that worker must hear it


def has_sessions(core: PoolCore, slot: Slot) -> bool:
    return any(sess.slot is slot for sess in core.sessions.values())
