"""Live sessions and capacity: admission, lookup, and closing everything at shutdown."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ditto.errors import CapacityError, ErrorCode

if TYPE_CHECKING:
    from ditto.server.session import Session


class SessionRegistry:
    """Admission: at most ``max_sessions`` connections, of which at most ``max_live`` stream live
    (the live sessions the backend can keep real time; file sessions use what is left)."""

    def __init__(self, max_sessions: int, max_live: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.max_live = max_sessions if max_live is None else min(max_live, max_sessions)
        self._sessions: dict[str, "Session"] = {}
        self._live: set[str] = set()
        self.accepting = True

    @property
    def active(self) -> int:
        return len(self._sessions)

    @property
    def live(self) -> int:
        return len(self._live)

    def admit(self, session: "Session") -> None:
        """Register a session or raise CapacityError (``busy``, ``client_id_in_use``, ``shutting_down``)."""
        if not self.accepting:
            raise CapacityError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN)
        if session.client_id in self._sessions:
            raise CapacityError(
                f"client id {session.client_id!r} already has a session open", code=ErrorCode.CLIENT_ID_IN_USE
            )
        if len(self._sessions) >= self.max_sessions:
            raise CapacityError(f"the server is at its limit of {self.max_sessions} sessions; retry later")
        self._sessions[session.client_id] = session

    def start_live(self, session: "Session") -> None:
        """An admitted session starts streaming live, or CapacityError (``busy``) past ``max_live``."""
        if len(self._live) >= self.max_live:
            raise CapacityError(
                f"the server is keeping its limit of {self.max_live} live sessions real time; retry later"
            )
        self._live.add(session.client_id)

    def release(self, session: "Session") -> None:
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
            self._live.discard(session.client_id)

    async def close_all(self, timeout_s: float) -> None:
        """Stop accepting, ask every session to end (close code 1012), wait up to ``timeout_s``."""
        self.accepting = False
        sessions = list(self._sessions.values())
        for session in sessions:
            session.request_shutdown()
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.closed.wait()) for s in sessions], timeout=timeout_s)
