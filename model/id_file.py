"""Compact token-id files: a corpus encoded once, then memory-mapped by every training run that reads it.

nanoGPT's ``prepare.py`` writes ``train.bin`` as uint16 once and ``train.py`` memory-maps it; this does the same
for text the trainer is given: each character's id, one byte when the vocabulary has at most 256 entries (two
up to 65,536, else four), in one file per corpus, so a 1 GB corpus costs 1 GB on disk and only the pages a run
touches in memory — never the text as a Python string (4 bytes a character) plus int64 ids (8 more).

Encoding streams the files in blocks (an incremental UTF-8 decoder, so a block boundary may split a
character): one pass builds the vocabulary and each file's sha256, the second writes the ids, atomically. A
JSON record beside the ids names the sources (path, size, modification and change times, inode, sha256),
the vocabulary and the dtype; a later run reuses the file while every source is unchanged by those, and
encodes it again otherwise — never a stale file silently.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.atomic import atomic_write, atomic_write_bytes
from model.data import CorpusError, read_bytes
from model.vocab import Vocab

__all__ = ["BLOCK_BYTES", "EncodedCorpus", "default_cache_dir", "encode_corpus"]

FORMAT = "rnnlm-ids/2"  # 2: each source's stat apart from its sha256 and length
BLOCK_BYTES = 4 * 2**20  # read and encode this much text at a time
PROGRESS_FROM_BYTES = 64 * 2**20  # smaller corpora encode in a moment: no progress bar


@dataclass
class EncodedCorpus:
    ids: np.ndarray  # (n,) uint8/uint16/uint32, memory-mapped read-only
    vocab: Vocab
    files: list[dict]  # name, sha256, chars of each source (the model card's record)
    path: Path  # the id file
    reused: bool  # True when an earlier run's file was read, not written


def default_cache_dir() -> Path:
    """``$RNNLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnnlm``, else ``~/.cache/rnnlm``."""
    if os.environ.get("RNNLM_CACHE_DIR"):
        return Path(os.environ["RNNLM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnnlm"


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 2**8 else np.uint16 if vocab_size <= 2**16 else np.uint32)


def _stat(path: Path) -> dict:
    s = path.stat()
    return {
        "path": str(path.resolve()),
        "size": s.st_size,
        "mtime_ns": s.st_mtime_ns,
        "ctime_ns": s.st_ctime_ns,
        "inode": s.st_ino,
    }


def _blocks(path: Path, block_bytes: int):
    """(bytes, text) of ``path`` in pieces, decoded as UTF-8 across block boundaries (CorpusError if it is not)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # of the block in the file
    with open(path, "rb") as f:
        while True:
            data = f.read(block_bytes)
            pending = decoder.getstate()[0]  # an unfinished character from the block before
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                byte = (pending + data)[e.start]
                raise CorpusError(
                    f"corpus {path}: not UTF-8 text (byte 0x{byte:02x} at offset {offset - len(pending) + e.start})"
                ) from None
            offset += len(data)
            if not data:
                return
            yield data, text  # text may be "": a block holding part of one character


def _key(sources: list[Path]) -> str:
    """The id file's name: from the sources' paths, in order."""
    h = hashlib.sha256()
    for p in sources:
        h.update(str(p.resolve()).encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:24]


def encode_corpus(
    paths: list[str | os.PathLike],
    cache_dir: str | os.PathLike | None = None,
    vocab: Vocab | None = None,
    block_bytes: int = BLOCK_BYTES,
    progress: bool = True,
) -> EncodedCorpus:
    """The corpus's ids, memory-mapped: from the cache when its sources are unchanged, else encoded now.

    ``vocab`` fixes the vocabulary (a resumed run's; unseen characters become ``<unk>``); by default it is the
    corpus's own, built in the same streaming pass."""
    sources = [Path(p) for p in paths]
    for p in sources:
        read_bytes(p, 1)  # missing, unreadable or empty: one line now, before any work
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"cache folder {folder}: cannot create it ({e.strerror})") from None
    key = _key(sources)
    ids_path, record_path = folder / f"{key}.ids", folder / f"{key}.json"
    stats = [_stat(p) for p in sources]
    record = _read_record(record_path)
    if (
        record is not None
        and [s["stat"] for s in record["sources"]] == stats
        and (vocab is None or vocab.tokens == record["vocab"])
        and ids_path.exists()
        and ids_path.stat().st_size == record["count"] * np.dtype(record["dtype"]).itemsize
    ):
        return _open(ids_path, record, reused=True)
    record = _encode(sources, stats, vocab, ids_path, block_bytes, progress)
    atomic_write_bytes(record_path, json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8"))
    return _open(ids_path, record, reused=False)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def _open(path: Path, record: dict, reused: bool) -> EncodedCorpus:
    dtype, count = np.dtype(record["dtype"]), record["count"]
    # copy-on-write: never written, but torch takes only writable arrays without a warning
    ids = np.memmap(path, dtype=dtype, mode="c", shape=(count,)) if count else np.zeros(0, dtype=dtype)
    files = [
        {"name": Path(s["stat"]["path"]).name, "sha256": s["sha256"], "chars": s["chars"]} for s in record["sources"]
    ]
    return EncodedCorpus(ids, Vocab(record["vocab"]), files, path, reused)


def _encode(
    sources: list[Path], stats: list[dict], vocab: Vocab | None, ids_path: Path, block_bytes: int, progress: bool
) -> dict:
    total = sum(s["size"] for s in stats)
    chars: set[str] = set()
    counts, digests = [], []
    with tqdm(
        total=2 * total,
        unit="B",
        unit_scale=True,
        desc="encoding corpus",
        leave=False,
        mininterval=1.0,
        disable=not progress or total < PROGRESS_FROM_BYTES,
    ) as bar:
        for path in sources:  # pass 1: the vocabulary, each file's sha256 and length in characters
            h, n = hashlib.sha256(), 0
            for data, text in _blocks(path, block_bytes):
                h.update(data)
                if vocab is None:
                    chars.update(text)
                n += len(text)
                bar.update(len(data))
            digests.append(h.hexdigest())
            counts.append(n)
        if vocab is None:
            vocab = Vocab.from_corpus("".join(sorted(chars)))
        dtype = _dtype(len(vocab))

        def write(tmp: str) -> None:  # pass 2: the ids
            with open(tmp, "wb") as out:
                for path in sources:
                    for data, text in _blocks(path, block_bytes):
                        out.write(vocab.encode(text).numpy().astype(dtype).tobytes())
                        bar.update(len(data))

        atomic_write(ids_path, write)
    return {
        "format": FORMAT,
        "dtype": dtype.name,
        "count": sum(counts),
        "vocab": vocab.tokens,
        "sources": [{"stat": s, "sha256": d, "chars": c} for s, d, c in zip(stats, digests, counts)],
    }
