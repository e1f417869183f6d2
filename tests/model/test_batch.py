"""The batched decoding step: every row evolves exactly as that sequence would alone."""

import pytest
import torch

from model import warm
from model.batch import BatchDecoder
from model.cells import CELLS
from model.decode import StepDecoder
from tests.model.test_inference import make_model


def alone(model, prefix, tokens):
    """A hand-written loop over one sequence: the logits after each token (StepDecoder, one at a time)."""
    state, _ = warm(model, prefix)
    decoder = StepDecoder(model, state)
    return torch.stack([decoder.step(t).clone() for t in tokens])


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_each_row_of_a_batch_step_equals_its_sequence_alone(cell, layers):
    model = make_model(cell, layers=layers)
    with torch.no_grad():  # ×2, not make_model's ×4: that 2-layer tanh RNN is chaotic, and a batched matmul's
        for p in model.parameters():  # 1e-7 rounding difference grew past 1e-5 within 15 steps on some CPUs
            p.div_(2)
    torch.manual_seed(1)
    prefixes = [torch.randint(1, 12, (n,)) for n in (3, 9, 1, 6)]
    streams = torch.randint(1, 12, (4, 15))
    batch = BatchDecoder(model)
    for p in prefixes:
        batch.add(warm(model, p)[0])
    got = torch.stack([batch.step(streams[:, t]).clone() for t in range(15)], dim=1)  # (4, 15, V)
    for row, p in enumerate(prefixes):
        torch.testing.assert_close(got[row], alone(model, p, streams[row].tolist()), atol=1e-5, rtol=1e-5)


def test_one_row_is_bitwise_the_single_stream_step():
    model = make_model("rnn", layers=2)
    state, _ = warm(model, torch.tensor([1, 2, 3]))
    batch = BatchDecoder(model)
    batch.add(state)
    tokens = [4, 5, 6, 7, 8]
    got = torch.stack([batch.step(torch.tensor([t]))[0].clone() for t in tokens])
    assert torch.equal(got, alone(model, torch.tensor([1, 2, 3]), tokens))


@pytest.mark.parametrize("cell", CELLS)
def test_rows_join_and_leave_between_steps(cell):
    model = make_model(cell, layers=2)
    a, b, c = (torch.randint(1, 12, (4,)) for _ in range(3))
    ta, tb, tc = (torch.randint(1, 12, (6,)).tolist() for _ in range(3))
    batch = BatchDecoder(model)
    batch.add(warm(model, a)[0])
    batch.add(warm(model, b)[0])
    out_a, out_b, out_c = [], [], []
    for t in range(3):  # a and b together
        logits = batch.step(torch.tensor([ta[t], tb[t]])).clone()  # the step's logits are valid until the next
        out_a.append(logits[0])
        out_b.append(logits[1])
    batch.keep([1])  # a leaves
    batch.add(warm(model, c)[0])  # c joins
    for t in range(3):
        logits = batch.step(torch.tensor([tb[3 + t], tc[t]])).clone()
        out_b.append(logits[0])
        out_c.append(logits[1])
    assert len(batch) == 2
    torch.testing.assert_close(torch.stack(out_a), alone(model, a, ta[:3]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(out_b), alone(model, b, tb), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(out_c), alone(model, c, tc[:3]), atol=1e-5, rtol=1e-5)
    # the state of a row equals the state its sequence reaches alone
    state_b = batch.row_state(0)
    expected, _ = warm(model, torch.cat([b, torch.tensor(tb)]))
    for ours, theirs in zip(state_b, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_stepping_never_modifies_a_state_handed_in():
    model = make_model("rnn", layers=2)
    state, _ = warm(model, torch.tensor([1, 2, 3]))
    before = [s.clone() for s in state]
    batch = BatchDecoder(model)
    batch.add(state)
    batch.add(state)
    for t in range(4):
        batch.step(torch.tensor([t + 1, t + 2]))
    assert all(torch.equal(s, b) for s, b in zip(state, before))
