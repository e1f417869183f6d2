"""The chat template: how /v1/chat/completions turns messages into the text a character model continues.

It is plain text and a setting (``RNNLM_CHAT_TEMPLATE``): each message becomes the template with ``{role}`` —
the message's ``name`` if it has one, else its role, in capitals — and ``{content}`` filled in. The default,
for a model trained on plays, is ``{role}:\\n{content}\\n\\n``, so a conversation reads like a script:

    USER:
    Good morrow, what news?

    ASSISTANT:

The assistant's turn is opened at the end (the template up to ``{content}``), and the reply stops at the end
of its turn (the template's text after ``{content}``: a blank line by default), as the next speaker would
begin there.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TEMPLATE", "ChatTemplate"]

DEFAULT_TEMPLATE = "{role}:\n{content}\n\n"


@dataclass(frozen=True)
class ChatTemplate:
    template: str = DEFAULT_TEMPLATE
    assistant: str = "assistant"

    def __post_init__(self) -> None:
        if self.template.count("{content}") != 1 or self.template.count("{role}") != 1:
            raise ValueError("the chat template needs exactly one {role} and one {content}")
        if self.template.index("{role}") > self.template.index("{content}"):
            raise ValueError("the chat template must name the role before the content")

    @property
    def turn_end(self) -> str:
        """What follows a message's content: the reply's stop sequence."""
        return self.template.split("{content}", 1)[1]

    def speaker(self, role: str, name: str | None = None) -> str:
        return (name or role).upper()

    def render(self, messages: list[tuple[str, str | None, str]]) -> str:
        """(role, name, content) messages as text, then the assistant's turn opened."""
        turns = [self._fill(self.speaker(role, name), content) for role, name, content in messages]
        opener = self.template.split("{content}", 1)[0].replace("{role}", self.speaker(self.assistant))
        return "".join(turns) + opener

    def _fill(self, role: str, content: str) -> str:
        head, tail = self.template.split("{content}", 1)
        return head.replace("{role}", role) + content + tail

    def describe(self) -> dict:
        return {"template": self.template, "assistant_role": self.speaker(self.assistant), "stop": self.turn_end}
