"""Weight files: one ``.safetensors`` file, float32 tensors, metadata ``format``/``config``/``vocab``/``training``.

Loading never unpickles. Anything that breaks the contract (README.md, "Weight files") raises :class:`WeightsError`
naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from model.atomic import atomic_write_bytes
from model.lm import RNNLM, LMConfig
from model.vocab import Vocab

__all__ = ["FORMAT", "LoadedWeights", "WeightsError", "load_weights", "save_weights"]

FORMAT = "rnnlm/1"
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class WeightsError(Exception):
    """A weight file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class LoadedWeights:
    model: RNNLM
    vocab: Vocab
    training: dict = field(default_factory=dict)
    path: str = ""
    sha256: str = ""  # of the whole file (its metadata and tensors): the identity of this model

    @property
    def config(self) -> LMConfig:
        return self.model.config


def save_weights(path: str | os.PathLike, model: RNNLM, vocab: Vocab, training: dict | None = None) -> None:
    """Write ``model`` (float32, on CPU) with its config, vocab and provenance; atomically."""
    if len(vocab) != model.config.vocab_size:
        raise ValueError(f"vocab has {len(vocab)} entries but the model's vocab_size is {model.config.vocab_size}")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "vocab": vocab.to_json(),
        "training": json.dumps(training or {}, ensure_ascii=False),
    }
    atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata))


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedWeights:
    """Read and validate a weight file; build the model on ``device`` in eval mode."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(path, "file not found") from None
    except IsADirectoryError:
        raise WeightsError(path, "is a directory, not a weight file") from None
    except OSError as e:
        raise WeightsError(path, f"cannot read file ({e.strerror})") from None

    header = _read_header(path, data)
    metadata = header.pop("__metadata__", None)
    config, vocab, training = _read_metadata(path, metadata)
    model = RNNLM(config)
    _check_tensor_entries(path, header, model, len(data) - 8 - _header_length(data))
    try:
        tensors = load_safetensors(data)
    except Exception as e:  # the safetensors parser found something our checks did not
        raise WeightsError(path, f"not a valid safetensors file ({e})") from None
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise WeightsError(path, f"tensor {name!r} contains NaN or infinite values")
    model.load_state_dict(tensors)
    model.to(device).eval()
    return LoadedWeights(
        model=model, vocab=vocab, training=training, path=str(path), sha256=hashlib.sha256(data).hexdigest()
    )


def _header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _read_header(path: Path, data: bytes) -> dict:
    if len(data) < 8:
        raise WeightsError(path, f"not a safetensors file (only {len(data)} bytes)")
    n = _header_length(data)
    if n > len(data) - 8:
        if n <= _MAX_HEADER and data[8:9] == b"{":
            raise WeightsError(path, f"truncated file (header needs {n} bytes, {len(data) - 8} present)")
        raise WeightsError(path, "not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(path, "not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(path, "not a safetensors file (header is not a JSON object)")
    return header


def _read_metadata(path: Path, metadata: object) -> tuple[LMConfig, Vocab, dict]:
    if not isinstance(metadata, dict):
        raise WeightsError(path, "missing metadata (expected format, config, vocab, training)")
    for key in ("format", "config", "vocab"):
        if key not in metadata:
            raise WeightsError(path, f"missing metadata field {key!r}")
    if metadata["format"] != FORMAT:
        raise WeightsError(path, f"unknown format version {metadata['format']!r} (expected {FORMAT!r})")
    try:
        config = LMConfig.from_dict(json.loads(metadata["config"]))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise WeightsError(path, f"malformed metadata 'config': {e}") from None
    try:
        vocab = Vocab.from_json(metadata["vocab"])
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise WeightsError(path, f"malformed metadata 'vocab': {e}") from None
    if len(vocab) != config.vocab_size:
        raise WeightsError(path, f"vocab has {len(vocab)} entries but config vocab_size is {config.vocab_size}")
    try:
        training = json.loads(metadata.get("training", "{}"))
    except (json.JSONDecodeError, TypeError) as e:
        raise WeightsError(path, f"malformed metadata 'training': {e}") from None
    if not isinstance(training, dict):
        raise WeightsError(path, "malformed metadata 'training': expected a JSON object")
    return config, vocab, training


def _check_tensor_entries(path: Path, header: dict, model: RNNLM, data_bytes: int) -> None:
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    missing = sorted(expected.keys() - header.keys())
    if missing:
        raise WeightsError(
            path, f"missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = sorted(header.keys() - expected.keys())
    if extra:
        raise WeightsError(path, f"unexpected tensor {extra[0]!r}")
    end = 0
    for name, shape in expected.items():
        entry = header[name]
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise WeightsError(path, f"not a safetensors file (bad entry for {name!r})")
        if entry["dtype"] != "F32":
            raise WeightsError(path, f"tensor {name!r} has dtype {entry['dtype']}, expected F32")
        if tuple(entry["shape"]) != shape:
            raise WeightsError(path, f"tensor {name!r} has shape {tuple(entry['shape'])}, expected {shape}")
        offsets = entry["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise WeightsError(path, f"not a safetensors file (bad offsets for {name!r})")
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES["F32"]:
            raise WeightsError(path, f"not a safetensors file (offsets of {name!r} do not match its shape)")
        end = max(end, offsets[1])
    if end > data_bytes:
        raise WeightsError(path, f"truncated file (tensor data needs {end} bytes, {data_bytes} present)")
