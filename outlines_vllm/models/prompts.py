"""What a prompt may be, for every model: plain text or a chat (a list of messages).

Online and offline models accept the same inputs, so switching between them never changes the
caller's code: a string, a list of ``{"role": ..., "content": ...}`` messages, or any object with
a ``messages`` attribute holding such a list (Outlines' ``Chat``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidPromptError

Message = dict[str, Any]
Prompt = str | Sequence[Message]


def is_chat(prompt: Any) -> bool:
    """Whether ``prompt`` is a conversation rather than plain text."""
    return not isinstance(prompt, str)


def to_messages(prompt: Any) -> list[Message]:
    """The conversation ``prompt`` stands for: plain text becomes one user message.

    Raises :class:`InvalidPromptError` for anything that is neither text nor messages.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = getattr(prompt, "messages", prompt)
    if isinstance(messages, Mapping) or not isinstance(messages, Sequence) or not messages:
        raise InvalidPromptError(
            f"a prompt must be a string or a non-empty list of messages, got {_describe(prompt)}"
        )
    out: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise InvalidPromptError(
                f"message {i} must be a dict with 'role' and 'content', got {_describe(message)}"
            )
        out.append(dict(message))
    return out


def to_text(prompt: Any) -> str:
    """``prompt`` as raw text (no chat template); only plain text qualifies."""
    if not isinstance(prompt, str):
        raise InvalidPromptError(
            "raw prompts (chat template turned off) must be strings; pass messages only when the "
            f"chat template is used, got {_describe(prompt)}"
        )
    return prompt


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"
