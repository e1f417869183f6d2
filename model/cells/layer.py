"""What every recurrent layer shares: its parameters, its input projection, weight drop, and the one function
that chooses which of a cell's implementations runs.

Row-vector convention as in the notebook (``X @ W``). Each layer owns
- ``w_xh`` (in × G·H): input map; for the first layer ``in`` = vocab size and ``X_t W_xh`` is a row lookup,
- ``w_hh`` (H × G·H): recurrent map,
- ``b_h``  (G·H): one bias for both maps,
with G gates stacked along the columns in PyTorch's order, so weights exchange with torch.nn.RNN/GRU/LSTM.
A layer maps inputs (T, B) token ids (first layer) or (T, B, in) floats, and a state tuple of (B, H) tensors —
``(h,)``, or ``(h, c)`` for the LSTM — to outputs (T, B, H) and the final state tuple.

Each cell's module (``rnn.py``, ``gru.py``, ``lstm.py``) opens with its equations as plain torch code: the
reference, which runs on any device and which the tests hold every other path to. Beneath it, that cell's fast
paths: a fused recurrence with a hand-written backward pass (BPTT), and a numpy step for CPU inference. A fourth
path, shared here, hands the sequence to torch's own fused recurrence (``torch._VF.rnn_tanh`` / ``gru`` /
``lstm``: cuDNN on CUDA) with the layer's weights in the exchange layout.
"""

from __future__ import annotations

import enum
import functools
import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cpu_step import on_cpu, read_sequence

__all__ = ["NUMPY_MAX_BATCH", "NUMPY_MIN_STEPS", "Path", "RecurrentLayer", "State", "choose_path"]

State = tuple[Tensor, ...]

# Without a graph to record, a layer reads a sequence in numpy (model/cpu_step.py) if it is at least
# NUMPY_MIN_STEPS long and at most NUMPY_MAX_BATCH wide: numpy's calls cost less than torch's for a few rows,
# torch's two OpenMP threads share a wide batch's matmuls better, and a short call does not pay for switching
# thread pools (BENCHMARKS.md, "Decoding in the engine").
NUMPY_MIN_STEPS = 16
NUMPY_MAX_BATCH = 4

# cuDNN copies weights that are not views of one flat buffer into one at every call, and says so each time; the
# fused path's weights are transposed views of this project's parameters, so the copy is the price of the layout
# (a few MB per call, next to a whole sequence's recurrence).
warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk of memory")


class Path(enum.Enum):
    """Which implementation of a cell reads a sequence."""

    RECORDED = "recorded"  # autograd records: the fused recurrence, whose backward pass is hand-written
    TORCH = "torch"  # nothing to record: the recurrence in torch, keeping nothing for a backward pass
    NUMPY = "numpy"  # nothing to record, on the CPU, long and narrow: the numpy step in a loop
    FUSED = "fused"  # on CUDA (a sequence, or recording), or in bf16/fp16: torch's fused recurrence (cuDNN)


@dataclass(frozen=True)
class PathFacts:
    """What the choice of path depends on, as :meth:`RecurrentLayer.path_facts` reads it from a call."""

    recording: bool  # autograd wants a gradient of the inputs, the state or a parameter
    numpy_can_read: bool  # every tensor in CPU memory, in a float type numpy has
    steps: int
    rows: int
    weight_dropped: bool  # W_hh is a fresh DropConnect sample, not the parameter numpy reads
    on_cuda: bool = False  # where cuDNN's fused kernels beat the loops here (BENCHMARKS.md, "Training on a GPU")
    low_precision: bool = False  # autocast to bf16/fp16 is on: the loops here keep float32, cuDNN takes it


def choose_path(facts: PathFacts) -> Path:
    """The one place that decides how a layer reads a sequence."""
    if facts.low_precision or (facts.on_cuda and (facts.recording or facts.steps > 1)):
        return Path.FUSED  # one step without a gradient stays in torch: the step the decoder's CUDA graphs record
    if facts.recording:
        return Path.RECORDED
    if (
        facts.numpy_can_read
        and not facts.weight_dropped
        and facts.steps >= NUMPY_MIN_STEPS
        and facts.rows <= NUMPY_MAX_BATCH
    ):
        return Path.NUMPY
    return Path.TORCH


def tanh_from_sigmoid_(s: Tensor) -> Tensor:
    """TANH VIA SIGMOID: given ``s = σ(2z)``, writes ``tanh z = 2s − 1`` over it (within 2e-7 of ``tanh`` in
    float32). The fused forward passes compute every tanh this way, the doubling folded into the operation
    before the sigmoid, because torch's CPU ``tanh`` measured two to four times slower than ``sigmoid`` on the
    trainer's blocks (BENCHMARKS.md, "Training throughput")."""
    return torch.add(_minus_one(s.dtype, s.device), s, alpha=2, out=s)


@functools.cache
def _minus_one(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The constant −1 of ``2s − 1``, made once per dtype and device (only ever read): making it at every call
    cost about a microsecond, a fifth of the operation on a (64 × 512) block."""
    return torch.tensor(-1.0, dtype=dtype, device=device)


def recurrent_weight_grad(h0: Tensor, states: Tensor, grad_products: Tensor) -> Tensor:
    """``dW_hh = Σ_t H_{t-1}^T dL/d(H_{t-1} W_hh)`` as one large matmul over steps 2..T plus the first step.

    h0: (B, H); states: H_1..H_T (T, B, H); grad_products: (T, B, G·H)."""
    grad_w_hh = h0.t() @ grad_products[0]
    if len(states) > 1:
        hidden, width = states.shape[-1], grad_products.shape[-1]
        grad_w_hh.addmm_(states[:-1].reshape(-1, hidden).t(), grad_products[1:].reshape(-1, width))
    return grad_w_hh


def numpy_sigmoid_(x: np.ndarray) -> None:
    """σ(x) = (1 + tanh(x / 2)) / 2, in place (numpy has no sigmoid; this form never overflows)."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5


class RecurrentLayer(nn.Module):
    """A cell's parameters and how to read a sequence with them. A subclass in its own module of this package
    names itself in ``cell`` and is then in :data:`model.cells.CELLS` — the list the trainer's ``--cell``,
    the weight files' ``config.cell`` and the tests read."""

    cell: str  # the name in CELLS and in a weight file's config
    num_gates = 1
    num_state_tensors = 1  # h, or (h, c) for the LSTM
    fused_op = None  # torch's fused recurrence for this cell: torch._VF.rnn_tanh, gru or lstm
    registry: dict[str, type[RecurrentLayer]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "cell" in cls.__dict__:
            RecurrentLayer.registry[cls.cell] = cls

    def __init__(self, input_size: int, hidden_size: int, weight_drop: float = 0.0):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_drop = weight_drop  # DropConnect on W_hh while training: one mask per forward pass
        width = self.num_gates * hidden_size
        self.w_xh = nn.Parameter(torch.empty(input_size, width))
        self.w_hh = nn.Parameter(torch.empty(hidden_size, width))
        self.b_h = nn.Parameter(torch.empty(width))
        self.add_cell_parameters()
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def add_cell_parameters(self) -> None:
        """Parameters of this cell beyond ``w_xh``, ``w_hh`` and ``b_h``."""

    # --- the math, as plain torch code ---------------------------------------------------------------------

    def step(self, x: Tensor, state: State, w_hh: Tensor) -> State:
        """One step of the cell's equations, ``x`` (B, in) floats: the state after it."""
        raise NotImplementedError

    def reference(self, x: Tensor, state: State, w_hh: Tensor | None = None) -> tuple[Tensor, State]:
        """The cell's equations one step at a time, token ids as one-hot rows: the oracle for every path."""
        w_hh = self.w_hh if w_hh is None else w_hh
        if x.dtype == torch.long:
            x = F.one_hot(x, self.input_size).to(self.w_xh.dtype)
        outputs = []
        for x_t in x.unbind(0):
            state = self.step(x_t, state, w_hh)
            outputs.append(state[0])
        return torch.stack(outputs), state

    # --- the fast paths -----------------------------------------------------------------------------------

    def project_inputs(self, x: Tensor) -> Tensor:
        """``X_t W_xh + b_h`` for every step at once: (T, B) ids or (T, B, in) floats -> (T, B, G·H)."""
        if x.dtype == torch.long:  # one-hot(X) @ W_xh is a row lookup; the bias folded into the table
            return F.embedding(x, self.w_xh + self.b_h)
        steps, batch, _ = x.shape
        return torch.addmm(self.b_h, x.reshape(steps * batch, -1), self.w_xh).view(steps, batch, -1)

    def recurrent_weights(self) -> Tensor:
        """``W_hh`` as this forward pass uses it: while training with ``weight_drop`` p, each entry is zeroed
        with probability p and the rest scaled by 1 / (1 - p) (DropConnect; the same mask for every step of the
        sequence, a fresh one per pass); otherwise ``W_hh`` itself."""
        if self.training and self.weight_drop > 0:
            return F.dropout(self.w_hh, self.weight_drop, training=True)
        return self.w_hh

    def path_facts(self, x: Tensor, state: State, w_hh: Tensor) -> PathFacts:
        """What :func:`choose_path` needs to know of a call with inputs ``x`` (ids or floats)."""
        device = state[0].device.type
        return PathFacts(
            recording=torch.is_grad_enabled() and any(t.requires_grad for t in (x, *state, *self.parameters())),
            numpy_can_read=on_cpu(*state, self.w_hh, *([] if x.dtype == torch.long else [x])),
            steps=x.shape[0],
            rows=x.shape[1],
            weight_dropped=w_hh is not self.w_hh,
            on_cuda=device == "cuda",
            low_precision=torch.is_autocast_enabled(device),
        )

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        w_hh = self.recurrent_weights()
        facts = self.path_facts(x, state, w_hh)
        path = choose_path(facts)
        if path is Path.FUSED:
            return self.fused(x, state, w_hh, recording=facts.recording)
        xw = self.project_inputs(x)
        if path is Path.NUMPY:
            return read_sequence(xw, state, self)
        return self.recurrence(xw, state, w_hh, recording=path is Path.RECORDED)

    def recurrence(self, xw: Tensor, state: State, w_hh: Tensor, recording: bool) -> tuple[Tensor, State]:
        """The cell's recurrence in torch over projected inputs ``xw`` (T, B, G·H), which it may overwrite:
        outputs (T, B, H) and the final state; with ``recording``, the fused forward pass whose backward pass
        is hand-written."""
        raise NotImplementedError

    def fused(self, x: Tensor, state: State, w_hh: Tensor, recording: bool) -> tuple[Tensor, State]:
        """torch's fused recurrence (cuDNN on CUDA) over ``x`` with this layer's weights in the exchange layout
        (``weight_ih = W_xh^T``, ``weight_hh = W_hh^T``, ``bias_ih = b_h``, ``bias_hh`` zeros but the GRU's
        ``b_hn``); under autocast, in autocast's dtype, the final state back in the state's. Token ids enter as
        one-hot rows (``X_t W_xh``, as the notebook writes it) while the vocabulary is at most G·H wide; wider,
        as their projections ``X_t W_xh + b_h`` through an identity map, the cheaper product of the two."""
        device = state[0].device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else state[0].dtype
        width = self.num_gates * self.hidden_size
        if x.dtype != torch.long:
            inputs, w_ih, b_ih = x, self.w_xh.t(), self.b_h
        elif self.input_size <= width:
            inputs, w_ih, b_ih = F.one_hot(x, self.input_size).to(dtype), self.w_xh.t(), self.b_h
        else:
            inputs = self.project_inputs(x)
            w_ih, b_ih = torch.eye(width, dtype=dtype, device=x.device), self.b_h.new_zeros(width)
        params = [t.to(dtype) for t in (w_ih, w_hh.t(), b_ih, self.fused_hidden_bias())]
        with torch.autocast(device, enabled=False):
            outputs, final = self.fused_call(inputs.to(dtype), tuple(s.to(dtype) for s in state), params, recording)
        return outputs, tuple(f.to(state[0].dtype) for f in final)

    def fused_hidden_bias(self) -> Tensor:
        """``bias_hh`` of the exchange layout: zeros (b_h holds the one bias), but the GRU's ``b_hn``."""
        return self.b_h.new_zeros(self.num_gates * self.hidden_size)

    def fused_call(self, inputs: Tensor, state: State, params: list[Tensor], recording: bool) -> tuple[Tensor, State]:
        """One layer of ``fused_op``: outputs (T, B, H) and the final state as (B, H) tensors."""
        outputs, h = self.fused_op(inputs, state[0][None], params, True, 1, 0.0, recording, False, False)
        return outputs, (h[0],)

    def numpy_arrays(self) -> SimpleNamespace:
        """This layer's parameters as numpy views of its tensors (no copies), by name."""
        return SimpleNamespace(**{name: p.detach().numpy() for name, p in self.named_parameters()})

    @staticmethod
    def numpy_update(xw: np.ndarray, state: tuple[np.ndarray, ...], layer: SimpleNamespace, out) -> None:
        """One step in numpy for n rows: ``xw`` (n, G·H) is ``X_t W_xh + b_h``, ``state`` the (n, H) arrays before
        the step; the new ones are written into ``out``, which must not share memory with ``state``."""
        raise NotImplementedError
