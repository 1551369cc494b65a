"""A step's state writes, held back until the engine knows the record's outputs can be produced.

A step writes its state as it goes; if the engine then has to dead-letter the record instead
(an output too large for its topic), none of those writes may count — a replay of the dead
letter must find the state as it was, or it would be skipped as already sent.
"""

from __future__ import annotations

from typing import Any

_DELETED = object()


class StagedState:
    """Reads through to ``state``; writes are kept here until :meth:`commit`."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self._writes: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self._writes:
            value = self._writes[key]
            return default if value is _DELETED else value
        return self._state.get(key, default)

    def set(self, key: Any, value: Any) -> None:
        self._writes[key] = value

    def delete(self, key: Any) -> None:
        self._writes[key] = _DELETED

    def commit(self) -> None:
        """Write what was staged to the real state (inside the engine's transaction)."""
        for key, value in self._writes.items():
            if value is _DELETED:
                if self._state.exists(key):
                    self._state.delete(key)
            else:
                self._state.set(key, value)
        self._writes.clear()
