"""Training data: reading corpora, the train/validation split, and the notebook's two sampling schemes.

- sequential: the training stream is laid out as B rows read left to right; batch i holds columns
  [iT, (i+1)T) of every row, so a row's state carries over from one batch to the next;
- random: every window of T tokens starts at a random place and from a fresh zero state.
Each epoch begins at a random offset in [0, T). The randomness of epoch e depends only on (seed, e), so a run
can resume at any batch of any epoch and see exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Corpus", "CorpusError", "batches_per_epoch", "epoch_batches", "read_bytes", "read_corpus"]


class CorpusError(Exception):
    """A corpus that cannot be trained on; the message is one line for the command line."""


@dataclass
class Corpus:
    text: str
    files: list[dict]  # name, sha256, chars of each file


def read_bytes(path: Path, limit: int = -1) -> bytes:
    """The file's bytes (at most ``limit``), or a one-line CorpusError for a missing, unreadable or empty file, or
    one that is not a regular file (a device such as /dev/zero or a pipe never ends: its size cannot be known)."""
    try:
        if Path(path).exists() and not Path(path).is_dir() and not Path(path).is_file():
            raise CorpusError(f"corpus {path}: not a regular file (a device or a pipe): give a text file")
        with open(path, "rb") as f:
            data = f.read(limit)
    except FileNotFoundError:
        raise CorpusError(f"corpus {path}: file not found") from None
    except IsADirectoryError:
        raise CorpusError(f"corpus {path}: is a directory") from None
    except OSError as e:
        raise CorpusError(f"corpus {path}: cannot read ({e.strerror})") from None
    if not data:
        raise CorpusError(f"corpus {path}: file is empty")
    return data


def read_corpus(paths: list[str | os.PathLike]) -> Corpus:
    """Read UTF-8 text files (concatenated in order), refusing missing, unreadable, empty or non-UTF-8 files."""
    texts, files = [], []
    for path in map(Path, paths):
        data = read_bytes(path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(
                f"corpus {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
            ) from None
        texts.append(text)
        files.append({"name": path.name, "sha256": hashlib.sha256(data).hexdigest(), "chars": len(text)})
    return Corpus(text="".join(texts), files=files)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def batches_per_epoch(num_tokens: int, batch_size: int, time_step: int) -> int:
    """Batches every epoch has whatever its random offset (< T) is."""
    return (num_tokens - time_step) // time_step // batch_size


def epoch_batches(
    ids: Tensor, batch_size: int, time_step: int, sampling: str, seed: int, epoch: int, positions: bool = False
):
    """Yield (X, Y) pairs of shape (batch_size, time_step) for one epoch; Y is X shifted by one token. ``ids``
    may be any integer dtype (a memory-mapped uint8 file, say): X and Y are views or gathers of it, in its
    dtype. With ``positions``, yield (X, Y, P) where P holds the index in ``ids`` of every token of X."""
    gen = _epoch_generator(seed, epoch)
    offset = int(torch.randint(0, time_step, (1,), generator=gen))
    num_batches = batches_per_epoch(len(ids), batch_size, time_step)
    stream = ids[offset:]
    steps = torch.arange(time_step)
    if sampling == "sequential":
        row_len = (len(stream) - 1) // batch_size
        xs = stream[: batch_size * row_len].view(batch_size, row_len)  # (B, row_len)
        ys = stream[1 : batch_size * row_len + 1].view(batch_size, row_len)
        row_starts = offset + torch.arange(batch_size)[:, None] * row_len  # (B, 1)
        for i in range(num_batches):
            cols = slice(i * time_step, (i + 1) * time_step)
            yield (xs[:, cols], ys[:, cols]) + ((row_starts + i * time_step + steps,) if positions else ())
    elif sampling == "random":
        num_windows = (len(stream) - 1) // time_step
        starts = torch.randperm(num_windows, generator=gen) * time_step
        for i in range(num_batches):
            index = starts[i * batch_size : (i + 1) * batch_size, None] + steps  # (B, T)
            yield (stream[index], stream[index + 1]) + ((offset + index,) if positions else ())
    else:
        raise ValueError(f"sampling must be 'sequential' or 'random', got {sampling!r}")
