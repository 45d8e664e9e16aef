"""Few-shot conversation prefixes: worked example turns placed before every prompt.

A prefix is a sequence of chat messages ({"role", "content"}) that the chat template
renders after the system prompt and before the user's question, identically in training,
evaluation and `spo init-values` (one rule: `spo.train.config.chat_kwargs`). It is part of
the prompt tokens, so it is never trained on (the loss covers completion tokens only).

`task.fewshot` in the config is one of:
- null: the task's own (`Task.fewshot`): `arithmetic_tool` has one worked tool-use
  example, every other built-in task and every file task has none;
- `[]`: no prefix;
- a list of messages, or a list of conversations (each a list of messages);
- the path of a `.json` file holding such a list, or of a `.jsonl` file with one message
  or one conversation (a list, or {"messages": [...]}) per line.

Roles are "user", "assistant" and "tool" (the tool's output as the model sees it; rendered
with `rollout.tool_role`, like the tool messages of a rollout). Each conversation starts
with a user message and ends with an assistant message; a user or tool message is answered
by an assistant message, and a tool message follows an assistant message. Anything else is
a `TaskError` naming the message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spo.tasks.base import TaskError

ROLES = ("user", "assistant", "tool")
Message = dict[str, str]

# what may follow each role inside a conversation
_NEXT = {"user": ("assistant",), "assistant": ("user", "tool"), "tool": ("assistant",)}


def parse_fewshot(value: Any) -> tuple[Message, ...]:
    """The prefix messages of a `task.fewshot` value (not null); TaskError if malformed."""
    if isinstance(value, str | Path):
        conversations = _read_file(Path(value))
    elif isinstance(value, Sequence):
        conversations = _conversations(list(value), "task.fewshot")
    else:
        raise TaskError(
            f"task.fewshot must be a list of chat messages or a .json/.jsonl path, "
            f"got {type(value).__name__}"
        )
    out: list[Message] = []
    for where, conversation in conversations:
        out += _check_conversation(conversation, where)
    return tuple(out)


def _conversations(items: list, where: str) -> list[tuple[str, list]]:
    """A list of messages is one conversation; a list of lists is several."""
    if not items:
        return []
    if all(isinstance(x, Mapping) and "messages" not in x for x in items):
        return [(where, items)]
    return [(f"{where} conversation {i + 1}", _messages_of(x, where)) for i, x in enumerate(items)]


def _messages_of(item: Any, where: str) -> list:
    if isinstance(item, Mapping) and "messages" in item:
        item = item["messages"]
    if not isinstance(item, Sequence) or isinstance(item, str):
        raise TaskError(
            f"{where}: expected a conversation (a list of messages), got {type(item).__name__}"
        )
    return list(item)


def _read_file(path: Path) -> list[tuple[str, list]]:
    if path.suffix not in (".json", ".jsonl"):
        raise TaskError(f"task.fewshot file {str(path)!r} must end in .json or .jsonl")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise TaskError(f"cannot read task.fewshot file {str(path)!r}: {reason}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskError(f"task.fewshot file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise TaskError(f"task.fewshot file {str(path)!r} must hold a JSON list")
        return _conversations(data, str(path))
    lines: list = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            lines.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    if all(isinstance(x, Mapping) and "messages" not in x for _, x in lines):
        return [(str(path), [x for _, x in lines])] if lines else []
    return [(f"{path}:{n}", _messages_of(x, f"{path}:{n}")) for n, x in lines]


def _check_conversation(messages: list, where: str) -> list[Message]:
    out: list[Message] = []
    for i, m in enumerate(messages):
        at = f"{where} message {i + 1}"
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            raise TaskError(f"{at}: a message is {{'role': ..., 'content': '<text>'}}, got {m!r}")
        role = m.get("role")
        if role not in ROLES:
            raise TaskError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
        previous = out[-1]["role"] if out else None
        if previous is None and role != "user":
            raise TaskError(f"{at}: a conversation starts with a user message, not {role!r}")
        if previous is not None and role not in _NEXT[previous]:
            raise TaskError(f"{at}: a {role!r} message cannot follow a {previous!r} message")
        out.append({"role": role, "content": m["content"]})
    if out and out[-1]["role"] != "assistant":
        raise TaskError(f"{where}: a conversation ends with an assistant message")
    return out
