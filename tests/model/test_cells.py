"""Each cell's reference (its equations as plain torch code) against torch.nn with the same weights, and every
fast path against the reference; the one function that chooses the path; the registry."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from model.cells import CELLS, NUMPY_MAX_BATCH, NUMPY_MIN_STEPS, Path, PathFacts, choose_path
from model.cells.gru import _GRURecurrence
from model.cells.lstm import _LSTMRecurrence
from model.cells.rnn import _TanhRecurrence
from model.cpu_step import read_sequence
from tests.model.test_lm import make_model
from tests.model.torch_reference import TORCH_CELLS, TorchReference, notebook_rnn_logits


def reference_logits(model, tokens, state=None):
    """The model's head over its layers' references: (B, T, V) and the final state."""
    state = model.init_state(tokens.shape[0]) if state is None else state
    x, finals = tokens.t(), []
    for l, layer in enumerate(model.layers):
        x, final = layer.reference(x, tuple(s[l] for s in state))
        finals.append(final)
    logits = x @ model.w_y + model.b_y
    return logits.transpose(0, 1), tuple(torch.stack(parts) for parts in zip(*finals))


def test_the_registry_holds_every_cell_module_and_each_has_a_torch_nn_oracle():
    assert set(CELLS) == {"rnn", "gru", "lstm"}
    assert set(CELLS) == set(TORCH_CELLS)  # a new cell needs its oracle in tests/model/torch_reference.py
    for name, layer_cls in CELLS.items():
        assert layer_cls.cell == name and layer_cls.__module__ == f"model.cells.{name}"


def test_the_tanh_cell_is_the_notebook_equation():
    model = make_model("rnn", 1, vocab=13, hidden=24)
    tokens = torch.randint(0, 13, (5, 17))
    torch.testing.assert_close(reference_logits(model, tokens)[0], notebook_rnn_logits(model, tokens))


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_the_reference_equals_torch_nn(cell, layers):
    model = make_model(cell, layers)
    tokens = torch.randint(0, 11, (3, 9))
    state = tuple(torch.randn_like(s) for s in model.init_state(3))
    logits, final = reference_logits(model, tokens, state)
    ref_logits, ref_final = TorchReference(model)(tokens, state)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(final, ref_final):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def run_path(layer, path, x, state, w_hh=None):
    """The layer's sequence read through one named path (FUSED and RECORDED record what autograd asks for)."""
    w_hh = layer.w_hh if w_hh is None else w_hh
    if path is Path.FUSED:
        recording = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *state, *layer.parameters()))
        return layer.fused(x, state, w_hh, recording=recording)
    xw = layer.project_inputs(x)
    if path is Path.NUMPY:
        with torch.no_grad():
            return read_sequence(xw, state, layer)
    with torch.set_grad_enabled(path is Path.RECORDED):
        return layer.recurrence(xw, state, w_hh, recording=path is Path.RECORDED)


@pytest.mark.parametrize("path", Path)
@pytest.mark.parametrize("first_layer", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_every_path_equals_the_reference(cell, first_layer, path):
    torch.manual_seed(1)
    layer = CELLS[cell](11 if first_layer else 7, 16)
    x = torch.randint(0, 11, (20, 3)) if first_layer else torch.randn(20, 3, 7)
    state = tuple(torch.randn(3, 16) for _ in range(layer.num_state_tensors))
    outputs, final = run_path(layer, path, x, state)
    with torch.no_grad():
        ref_outputs, ref_final = layer.reference(x, state)
    torch.testing.assert_close(outputs, ref_outputs, atol=1e-5, rtol=1e-5)
    assert len(final) == layer.num_state_tensors
    for ours, theirs in zip(final, ref_final):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_the_recorded_path_gives_the_references_gradients(cell):
    torch.manual_seed(2)
    layer = CELLS[cell](7, 16)
    x = torch.randn(12, 3, 7, requires_grad=True)
    state = tuple(torch.randn(3, 16, requires_grad=True) for _ in range(layer.num_state_tensors))
    weights = torch.randn(12, 3, 16)

    def gradients(read):
        layer.zero_grad()
        for t in (x, *state):
            t.grad = None
        outputs, final = read()
        ((outputs * weights).sum() + sum(f.square().sum() for f in final)).backward()
        return [t.grad.clone() for t in (x, *state, *layer.parameters())]

    ours = gradients(lambda: run_path(layer, Path.RECORDED, x, state))
    reference = gradients(lambda: layer.reference(x, state))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("weight_drop", [0.0, 0.5])
@pytest.mark.parametrize(("input_size", "hidden"), [(11, 16), (7, 16), (40, 4)])  # ids one-hot, floats, ids wide
@pytest.mark.parametrize("cell", CELLS)
def test_the_fused_path_gives_the_references_outputs_and_gradients(cell, input_size, hidden, weight_drop):
    """torch's fused recurrence with the weights in the exchange layout: the same outputs, final state and
    gradients (inputs, state, every parameter) as the cell's equations, with one DropConnect mask for both."""
    torch.manual_seed(3)
    layer = CELLS[cell](input_size, hidden, weight_drop=weight_drop).train()
    ids = input_size != 7
    x = torch.randint(0, input_size, (12, 3)) if ids else torch.randn(12, 3, input_size, requires_grad=True)
    state = tuple(torch.randn(3, hidden, requires_grad=True) for _ in range(layer.num_state_tensors))
    weights = torch.randn(12, 3, hidden)

    def run(read):
        layer.zero_grad()
        for t in (x, *state):
            t.grad = None
        torch.manual_seed(4)  # the same DropConnect mask for both reads
        outputs, final = read(layer.recurrent_weights())
        ((outputs * weights).sum() + sum(f.square().sum() for f in final)).backward()
        grads = [t.grad.clone() for t in (*([] if ids else [x]), *state, *layer.parameters())]
        return outputs.detach(), [f.detach() for f in final], grads

    fused = run(lambda w_hh: run_path(layer, Path.FUSED, x, state, w_hh))
    reference = run(lambda w_hh: layer.reference(x, state, w_hh))
    torch.testing.assert_close(fused[0], reference[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(fused[1] + fused[2], reference[1] + reference[2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_a_model_read_through_the_fused_path_trains_as_through_the_recorded_one(monkeypatch, cell, layers):
    """The whole model with dropout between layers and weight drop, the same random draws: logits, final
    state and every parameter's gradient equal whichever path its layers take."""
    model = make_model(cell, layers, weight_drop=0.3)
    model.config = dataclasses.replace(model.config, dropout=0.2)
    model.train()
    tokens, targets = torch.randint(0, 11, (2, 4, 10))

    def step(path):
        monkeypatch.setattr("model.cells.layer.choose_path", lambda facts: path)
        model.zero_grad()
        torch.manual_seed(5)
        logits, final = model(tokens)
        F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)).backward()
        return [logits.detach(), *(f.detach() for f in final), *(p.grad.clone() for p in model.parameters())]

    for a, b in zip(step(Path.FUSED), step(Path.RECORDED)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_under_bf16_autocast_the_fused_path_reads_in_bf16_and_the_weights_stay_float32(cell):
    model = make_model(cell, 2)
    tokens = torch.randint(0, 11, (4, 10))
    expected, _ = model(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        facts = model.layers[0].path_facts(tokens.t(), model.init_state(4)[0][:1], model.layers[0].w_hh)
        logits, final = model(tokens)
    assert facts.low_precision and choose_path(facts) is Path.FUSED
    assert logits.dtype == torch.bfloat16 and all(f.dtype == torch.float32 for f in final)
    torch.testing.assert_close(logits.float(), expected.detach(), atol=0.05, rtol=0.05)
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


FACTS = dict(recording=False, numpy_can_read=True, steps=NUMPY_MIN_STEPS, rows=NUMPY_MAX_BATCH, weight_dropped=False)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, Path.NUMPY),
        ({"recording": True}, Path.RECORDED),
        ({"recording": True, "steps": 1}, Path.RECORDED),
        ({"steps": NUMPY_MIN_STEPS - 1}, Path.TORCH),
        ({"rows": NUMPY_MAX_BATCH + 1}, Path.TORCH),
        ({"numpy_can_read": False}, Path.TORCH),
        ({"weight_dropped": True}, Path.TORCH),
        ({"on_cuda": True, "numpy_can_read": False}, Path.FUSED),
        ({"on_cuda": True, "numpy_can_read": False, "steps": 1}, Path.TORCH),  # the step CUDA graphs capture
        ({"on_cuda": True, "numpy_can_read": False, "steps": 1, "recording": True}, Path.FUSED),
        ({"on_cuda": True, "numpy_can_read": False, "recording": True}, Path.FUSED),
        ({"low_precision": True}, Path.FUSED),
        ({"low_precision": True, "recording": True}, Path.FUSED),
    ],
)
def test_choose_path(change, expected):
    assert choose_path(PathFacts(**{**FACTS, **change})) is expected


def facts_of(layer, x, state, mode):
    with mode():
        return layer.path_facts(x, state, layer.recurrent_weights())


@pytest.mark.parametrize("cell", CELLS)
def test_a_layer_reads_its_facts_from_the_call(cell):
    layer = CELLS[cell](11, 8, weight_drop=0.5)
    state = tuple(torch.zeros(2, 8) for _ in range(layer.num_state_tensors))
    ids = torch.randint(0, 11, (NUMPY_MIN_STEPS, 2))
    layer.eval()
    assert facts_of(layer, ids, state, torch.inference_mode) == PathFacts(False, True, NUMPY_MIN_STEPS, 2, False)
    assert facts_of(layer, ids, state, torch.enable_grad).recording  # the parameters want gradients
    layer.train()  # a fresh DropConnect sample of W_hh: numpy reads the parameter, so not numpy
    assert facts_of(layer, ids, state, torch.no_grad).weight_dropped
    assert facts_of(layer, ids, tuple(s.double() for s in state), torch.no_grad).weight_dropped is not False
    half = tuple(s.half() for s in state)
    assert not facts_of(layer.eval(), ids, half, torch.no_grad).numpy_can_read


def test_tanh_recurrence_backward_passes_gradcheck_in_float64():
    """Finite differences as the oracle for the hand-written BPTT."""
    torch.manual_seed(0)
    xw = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    w_hh = (0.5 * torch.randn(4, 4, dtype=torch.float64)).requires_grad_()
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    # The recurrence writes the states over its first argument: give it a copy each call.
    assert torch.autograd.gradcheck(lambda x, w, h: _TanhRecurrence.apply(x.clone(), w, h), (xw, w_hh, h0))


@pytest.mark.parametrize("steps", [1, 6])
def test_lstm_recurrence_backward_passes_gradcheck_in_float64(steps):
    """Finite differences as the oracle for the LSTM's hand-written BPTT, the final cell's gradient included."""
    torch.manual_seed(0)
    xw = torch.randn(steps, 3, 4 * 4, dtype=torch.float64, requires_grad=True)
    w_hh = (0.5 * torch.randn(4, 4 * 4, dtype=torch.float64)).requires_grad_()
    h0, c0 = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(_LSTMRecurrence.apply, (xw, w_hh, h0, c0))


@pytest.mark.parametrize("steps", [1, 6])
def test_gru_recurrence_backward_passes_gradcheck_in_float64(steps):
    """Finite differences as the oracle for the GRU's hand-written BPTT, b_hn's gradient included."""
    torch.manual_seed(0)
    xw = torch.randn(steps, 3, 3 * 4, dtype=torch.float64, requires_grad=True)
    w_hh = (0.5 * torch.randn(4, 3 * 4, dtype=torch.float64)).requires_grad_()
    b_hn = torch.randn(4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_GRURecurrence.apply, (xw, w_hh, b_hn, h0))


@pytest.mark.parametrize("cell", CELLS)
def test_two_forward_passes_before_one_backward_give_torch_nn_gradients(cell):
    """Gradient accumulation: the first pass's saved tensors are still in its graph when the second runs."""
    model = make_model(cell, 2)
    reference = TorchReference(model)
    a, b = torch.randint(0, 11, (2, 4, 20))
    targets = torch.randint(0, 11, (2, 4, 20))
    losses = [F.cross_entropy(model(x)[0].reshape(-1, 11), y.reshape(-1)) for x, y in zip((a, b), targets)]
    sum(losses).backward()
    ref = [F.cross_entropy(reference(x)[0].reshape(-1, 11), y.reshape(-1)) for x, y in zip((a, b), targets)]
    sum(ref).backward()
    expected = reference.grads_as_model(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_outputs_and_final_states_kept_across_steps_stay_as_they_were(cell):
    """A trainer carries the final state to the next batch and may keep outputs; the in-place writes of later
    steps (the tanh RNN's states over its projections) must not reach them."""
    model = make_model(cell, 1)
    tokens = torch.randint(0, 11, (3, 12))
    logits, state = model(tokens)
    outputs = model.layers[0](tokens.t(), tuple(s[0] for s in model.init_state(3)))[0]
    kept = [t.detach().clone() for t in (logits, outputs, *state)]
    for _ in range(3):  # further training steps of the same shape
        more, _ = model(torch.randint(0, 11, (3, 12)))
        more.sum().backward()
    for before, now in zip(kept, (logits, outputs, *state)):
        assert torch.equal(before, now)
