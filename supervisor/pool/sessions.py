"""Pool sessions: a session sticks to one worker process, and is lost with it.

    first call in session "s"  ──▶ bound to the slot it was dispatched to (pid noted once
                                   the call reaches the worker)
    later calls                ──▶ only that slot; queued FIFO for it when it is busy
    that worker dies or leaves ──▶ `lost` is set (sticky): every call raises SessionLost
                                   until end_session("s"), unless on_lost="reassign"
                                   (then the session is rebound, with empty state)

The worker keeps the state (`self.session`, a dict per session id); this side only keeps
the affinity. A `Sessions` belongs to the pool's state and is used under its lock.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..errors import SessionLost
from .link import Link, Slot

__all__ = ["Session", "Sessions"]


@attrs.define(eq=False)
class Session:
    """A session's affinity: its worker position and process; `lost` says why it is gone
    (sticky until `end_session`, so a session never silently continues elsewhere)."""

    slot: Slot
    pid: int | None = None  # None until its first call reached the worker
    lost: str | None = None

    def error(self, session: str) -> SessionLost:
        return SessionLost(
            f"session {session!r} is lost: its worker {self.slot.path!r} (pid {self.pid}) "
            f"{self.lost}; the session's state is gone (end_session({session!r}) to reuse "
            "the id, or use on_lost='reassign')",
            path=self.slot.path, context={"session_id": session})


class Sessions:
    """Every session of one pool, by id. `usable(slot)` says whether a slot's worker may
    take calls now (a session bound to a slot that is down is lost)."""

    def __init__(self, usable: Callable[[Slot], bool]) -> None:
        self.by_id: dict[str, Session] = {}
        self.usable = usable

    def get(self, session: str) -> Session | None:
        return self.by_id.get(session)

    def forget(self, session: str, sess: Session) -> None:
        """end_session: drop the affinity, if it is still this one."""
        if self.by_id.get(session) is sess:
            del self.by_id[session]

    def bound_slot(self, session: str, on_lost: str) -> Slot | None:
        """The slot the session is bound to, None when it is not bound (or was just
        unbound by reassign). Raises SessionLost for a lost session unless `on_lost` is
        "reassign"."""
        sess = self.by_id.get(session)
        if sess is None:
            return None
        if sess.lost is None and not self.usable(sess.slot):
            sess.lost = "is not running"
        if sess.lost is None:
            return sess.slot
        if on_lost != "reassign":
            raise sess.error(session)
        del self.by_id[session]  # opted in: a fresh worker, empty state
        return None

    def bind(self, session: str, slot: Slot) -> None:
        """The session's first call was dispatched to `slot`."""
        if session not in self.by_id:
            self.by_id[session] = Session(slot)

    def reached(self, session: str, link: Link, on_lost: str) -> bool:
        """Check that the session's worker is still the process it started on; False when
        the call must be dispatched again (reassign). Raises SessionLost."""
        sess = self.by_id.get(session)
        if sess is None or sess.slot is not link.slot:
            return sess is None  # ended meanwhile: a new session; moved: ask again
        if sess.pid is None:
            sess.pid = link.pid
        elif sess.pid != link.pid and sess.lost is None:
            sess.lost = f"was replaced by pid {link.pid}"
        if sess.lost is None:
            return True
        if on_lost != "reassign":
            raise sess.error(session)
        return False

    def may_presend(self, session: str | None, link: Link) -> bool:
        """Whether a queued call of `session` may be written to `link` for its caller."""
        if session is None:
            return True
        sess = self.by_id.get(session)
        if sess is None or sess.slot is not link.slot or sess.lost is not None:
            return False
        if sess.pid is None:
            sess.pid = link.pid
        return sess.pid == link.pid  # else the caller finds out (SessionLost) itself

    def lose(self, slot: Slot, pid: int | None, why: str) -> None:
        """The process `pid` of `slot` is gone (or going): its sessions are lost."""
        for sess in self.by_id.values():
            if sess.slot is slot and sess.pid == pid and sess.lost is None:
                sess.lost = why

    def pinned(self, slot: Slot) -> bool:
        """Whether some session is bound to `slot` (an overflow slot then stays)."""
        return any(sess.slot is slot for sess in self.by_id.values())
