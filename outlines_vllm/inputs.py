"""Input types beyond plain strings: :class:`Chat`, a conversation built step by step.

Every model takes a string, a list of ``{"role": ..., "content": ...}`` messages, or any object
with a ``messages`` list (this ``Chat``, or Outlines' own); ``models/prompts.py`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]


@dataclass
class Chat:
    """A conversation: a list of ``{"role": ..., "content": ...}`` messages, built step by step."""

    messages: list[Message] = field(default_factory=list)

    def add_system_message(self, content: Any) -> Chat:
        return self._add("system", content)

    def add_user_message(self, content: Any) -> Chat:
        return self._add("user", content)

    def add_assistant_message(self, content: Any) -> Chat:
        return self._add("assistant", content)

    def _add(self, role: str, content: Any) -> Chat:
        self.messages.append({"role": role, "content": content})
        return self
