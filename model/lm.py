"""The character-level recurrent language model: stacked recurrent layers and an output head.

``Y_t = H_t W_y + b_y`` gives scores over the vocabulary for every step; softmax gives probabilities.
The config travels with the weights, so a weight file rebuilds its model alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cells import CELLS, State

__all__ = ["LMConfig", "RNNLM"]


@dataclass(frozen=True)
class LMConfig:
    cell: str = "rnn"
    vocab_size: int = 65
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.0  # on every layer's outputs while training
    weight_drop: float = 0.0  # DropConnect on every layer's W_hh while training (AWD-LSTM's weight drop)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        for name in ("vocab_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.vocab_size < 2:
            raise ValueError("vocab_size must be at least 2 (<unk> and one character)")
        for name in ("dropout", "weight_drop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LMConfig:
        if not isinstance(data, dict):
            raise ValueError("config must be a JSON object")
        known = {"cell", "vocab_size", "hidden_size", "num_layers", "dropout", "weight_drop"}
        missing = {"cell", "vocab_size", "hidden_size", "num_layers"} - data.keys()
        if missing:
            raise ValueError(f"config lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})


class RNNLM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        layer_cls = CELLS[config.cell]
        h, v = config.hidden_size, config.vocab_size
        self.layers = nn.ModuleList(
            layer_cls(v if l == 0 else h, h, config.weight_drop) for l in range(config.num_layers)
        )
        self.w_y = nn.Parameter(torch.empty(h, v))
        self.b_y = nn.Parameter(torch.empty(v))
        bound = 1.0 / math.sqrt(h)
        nn.init.uniform_(self.w_y, -bound, bound)
        nn.init.zeros_(self.b_y)

    @property
    def device(self) -> torch.device:
        return self.w_y.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros: one (num_layers, batch, hidden) tensor for h, and another for c with the LSTM."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        device = self.device if device is None else device
        n = CELLS[self.config.cell].num_state_tensors
        return tuple(torch.zeros(shape, device=device, dtype=self.w_y.dtype) for _ in range(n))

    def next_logits(self, state: State) -> Tensor:
        """``Y = H W_y + b_y`` for the top layer's H of ``state``: the scores (B, V) for the token after it."""
        return torch.addmm(self.b_y, state[0][-1], self.w_y)

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits (B, T, V) for token ids (B, T), and the state after the last step."""
        batch, steps = tokens.shape
        x, new_state = self._read(tokens, state)
        logits = torch.addmm(self.b_y, x.reshape(steps * batch, -1), self.w_y)  # head once: (T·B, V)
        return logits.view(steps, batch, -1).transpose(0, 1), new_state  # (B, T, V)

    def advance(self, tokens: Tensor, state: State | None = None) -> State:
        """The state after reading token ids (B, T), without the scores: what a burn-in reads."""
        return self._read(tokens, state)[1]

    def _read(self, tokens: Tensor, state: State | None) -> tuple[Tensor, State]:
        """The top layer's outputs (T, B, H) for token ids (B, T), and the state after the last step."""
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        x = tokens.t()  # (T, B)
        finals = []
        for l, layer in enumerate(self.layers):
            x, final = layer(x, tuple(s[l] for s in state))  # (T, B, H)
            if self.config.dropout and self.training:
                x = F.dropout(x, self.config.dropout, training=True)
            finals.append(final)
        return x, tuple(torch.stack(parts) for parts in zip(*finals))  # each (L, B, H)
