"""What the engine runs: a job per request message — a generation (a prompt read once, then one batch row per
decoding) or a task done a chunk at a time (scoring)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field

import torch

from app.engine.generation import Decoding
from model import State

__all__ = ["GenerationJob", "Job", "QueueFull", "TaskJob"]


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Job:
    on_done: Callable[[object, BaseException | None], None]  # called once, from the engine's loop
    cancelled: bool = False
    steps: Generator | None = None  # work done a chunk at a time: yields between chunks, returns the result
    # The request it belongs to, for a fair share of the batch: one HTTP request's prompts are one group
    # (None: a group of its own).
    group: Hashable | None = None
    held: int = 0  # batch rows reserved for it since it was admitted (its width, less its rows put aside)

    @property
    def width(self) -> int:  # batch rows the job will occupy
        return 0


@dataclass(eq=False)
class TaskJob(Job):
    """Work done a chunk at a time (``steps``) whose result is the job's result: scoring."""


@dataclass(eq=False)
class GenerationJob(Job):
    """A prompt, read once, then one batch row per decoding (OpenAI's ``n`` shares the prompt's state)."""

    text: str = ""
    ids: torch.Tensor | None = None  # the prompt's token ids
    decodings: list[Decoding] = field(default_factory=list)
    start: State | None = None  # the state to start from, after ids[:start_at] (None: zeros)
    start_at: int = 0
    start_logits: torch.Tensor | None = None  # with start_at == len(ids): the next token's scores
    root: str = ""  # what the text is read after, for the prefix cache: "" (zeros) or a state token's name
    want_state: bool = False  # keep each decoding's final state (the client asked for its token)
    rows: int = 0  # batch rows it holds now
    parked: int = 0  # its rows put aside for another request's, waiting to rejoin

    @property
    def width(self) -> int:
        return len(self.decodings)
