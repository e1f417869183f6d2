"""Independent oracles: the same weights copied into torch.nn.RNN / GRU / LSTM with a one-hot input and a
Linear head, and the notebook's own formulation (one-hot @ W_xh, one step at a time)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import RNNLM

TORCH_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class TorchReference(nn.Module):
    """torch.nn's recurrent module fed one-hot vectors, plus an nn.Linear head."""

    def __init__(self, model: RNNLM):
        super().__init__()
        cfg = model.config
        self.vocab_size = cfg.vocab_size
        self.rnn = TORCH_CELLS[cfg.cell](cfg.vocab_size, cfg.hidden_size, cfg.num_layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        h = cfg.hidden_size
        with torch.no_grad():
            for l, layer in enumerate(model.layers):
                getattr(self.rnn, f"weight_ih_l{l}").copy_(layer.w_xh.t())
                getattr(self.rnn, f"weight_hh_l{l}").copy_(layer.w_hh.t())
                getattr(self.rnn, f"bias_ih_l{l}").copy_(layer.b_h)
                bias_hh = getattr(self.rnn, f"bias_hh_l{l}")
                bias_hh.zero_()
                if cfg.cell == "gru":
                    bias_hh[2 * h :] = layer.b_hn
            self.head.weight.copy_(model.w_y.t())
            self.head.bias.copy_(model.b_y)

    def forward(self, tokens, state=None):
        x = F.one_hot(tokens, self.vocab_size).float()
        if state is not None and len(state) == 1:
            state = state[0]
        out, final = self.rnn(x, state)
        final = final if isinstance(final, tuple) else (final,)
        return self.head(out), final

    def grads_as_model(self, model: RNNLM) -> dict[str, torch.Tensor]:
        """This module's gradients, renamed and transposed into the project's parameter names."""
        h = model.config.hidden_size
        grads = {"w_y": self.head.weight.grad.t(), "b_y": self.head.bias.grad}
        for l in range(model.config.num_layers):
            bias_ih = getattr(self.rnn, f"bias_ih_l{l}").grad
            grads[f"layers.{l}.w_xh"] = getattr(self.rnn, f"weight_ih_l{l}").grad.t()
            grads[f"layers.{l}.w_hh"] = getattr(self.rnn, f"weight_hh_l{l}").grad.t()
            grads[f"layers.{l}.b_h"] = bias_ih
            if model.config.cell == "gru":
                grads[f"layers.{l}.b_hn"] = getattr(self.rnn, f"bias_hh_l{l}").grad[2 * h :]
        return grads


def notebook_rnn_logits(model: RNNLM, tokens: torch.Tensor) -> torch.Tensor:
    """The seed notebook's way, for a 1-layer tanh RNN: one-hot X_t @ W_xh, a Python loop over steps,
    ``H = tanh(X_t W_xh + H W_hh + b_h)``, ``Y_t = H W_y + b_y``. Returns (B, T, V)."""
    layer = model.layers[0]
    batch, steps = tokens.shape
    H = torch.zeros(batch, model.config.hidden_size)
    outputs = []
    for t in range(steps):
        X = F.one_hot(tokens[:, t], model.config.vocab_size).float()
        H = torch.tanh(X @ layer.w_xh + H @ layer.w_hh + layer.b_h)
        outputs.append(H @ model.w_y + model.b_y)
    return torch.stack(outputs, dim=1)
