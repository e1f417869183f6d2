import contextlib

import pytest
import torch
import torch.nn.functional as F

from model import RNNLM, LMConfig
from model.cells import CELLS, NUMPY_MIN_STEPS
from tests.model.torch_reference import TorchReference

# Recording a graph runs the fused recurrence; inference on the CPU runs it in numpy from NUMPY_MIN_STEPS
# steps on (so the tests below read sequences on both sides of that length; tests/model/test_cells.py holds
# each path to the cell's reference alone).
GRAD_MODES = {"recording": contextlib.nullcontext, "inference": torch.inference_mode}
LENGTHS = [5, NUMPY_MIN_STEPS + 4]


def make_model(
    cell: str, layers: int, vocab: int = 11, hidden: int = 16, seed: int = 0, weight_drop: float = 0.0
) -> RNNLM:
    torch.manual_seed(seed)
    model = RNNLM(LMConfig(cell=cell, vocab_size=vocab, hidden_size=hidden, num_layers=layers, weight_drop=weight_drop))
    with torch.no_grad():
        model.b_y.uniform_(-1, 1)  # zeros at initialisation: give the output bias something to get wrong
    return model


@pytest.mark.parametrize("steps", LENGTHS)
@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_logits_and_final_state_match_torch_nn(cell, layers, mode, steps):
    model = make_model(cell, layers)
    reference = TorchReference(model)
    tokens = torch.randint(0, 11, (3, steps))
    with GRAD_MODES[mode]():
        logits, state = model(tokens)
    ref_logits, ref_state = reference(tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert len(state) == len(ref_state)
    for ours, theirs in zip(state, ref_state):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", LENGTHS)
@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_logits_match_torch_nn_from_a_given_state(cell, layers, mode, steps):
    model = make_model(cell, layers)
    reference = TorchReference(model)
    tokens = torch.randint(0, 11, (2, steps))
    state = tuple(torch.randn_like(s) for s in model.init_state(2))
    with GRAD_MODES[mode]():
        logits, final = model(tokens, state)
    ref_logits, ref_final = reference(tokens, state)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(final, ref_final):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_torch_nn(cell, layers):
    model = make_model(cell, layers)
    reference = TorchReference(model)
    tokens = torch.randint(0, 11, (4, 12))
    targets = torch.randint(0, 11, (4, 12))
    state = tuple(torch.randn_like(s).requires_grad_() for s in model.init_state(4))
    ref_state = tuple(s.detach().clone().requires_grad_() for s in state)

    logits, final = model(tokens, state)
    loss = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)) + sum(f.sum() for f in final)
    loss.backward()
    ref_logits, ref_final = reference(tokens, ref_state)
    ref_loss = F.cross_entropy(ref_logits.reshape(-1, 11), targets.reshape(-1)) + sum(f.sum() for f in ref_final)
    ref_loss.backward()

    expected = reference.grads_as_model(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)
    for ours, theirs in zip(state, ref_state):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_recurrent_weights_get_gradients_when_the_input_map_is_frozen(cell):
    """A layer records its graph when any of its parameters wants a gradient, even if its inputs do not
    (here a long, narrow batch, which inference would read in numpy)."""
    model = make_model(cell, 1)
    reference = TorchReference(model)
    for p in (model.layers[0].w_xh, model.layers[0].b_h):
        p.requires_grad_(False)
    tokens = torch.randint(0, 11, (2, NUMPY_MIN_STEPS + 4))
    targets = torch.randint(0, 11, (2, NUMPY_MIN_STEPS + 4))
    logits, _ = model(tokens)
    F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)).backward()
    ref_logits, _ = reference(tokens)
    F.cross_entropy(ref_logits.reshape(-1, 11), targets.reshape(-1)).backward()
    expected = reference.grads_as_model(model)
    assert model.layers[0].w_hh.grad is not None
    torch.testing.assert_close(model.layers[0].w_hh.grad, expected["layers.0.w_hh"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_trains_through_one_dropconnect_mask_on_w_hh_per_pass(cell):
    """Oracle: torch.nn with W_hh ⊙ mask / (1 - p) copied in, the masks drawn from the same seed by a separate
    dropout of a tensor of ones; logits and every gradient agree, so each step used the same mask and the
    dropped entries of W_hh get no gradient."""
    p, layers = 0.4, 2
    model = make_model(cell, layers, weight_drop=p)
    tokens = torch.randint(0, 11, (3, NUMPY_MIN_STEPS + 2))
    targets = torch.randint(0, 11, (3, NUMPY_MIN_STEPS + 2))
    torch.manual_seed(7)
    masks = [F.dropout(torch.ones_like(layer.w_hh), p) for layer in model.layers]
    dropped = make_model(cell, layers)
    dropped.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer, mask in zip(dropped.layers, masks):
            layer.w_hh.mul_(mask)
    reference = TorchReference(dropped)
    assert any((mask == 0).any() for mask in masks) and all((mask != 0).any() for mask in masks)

    model.train()
    torch.manual_seed(7)
    logits, _ = model(tokens)
    F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)).backward()
    ref_logits, _ = reference(tokens)
    F.cross_entropy(ref_logits.reshape(-1, 11), targets.reshape(-1)).backward()
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    expected = reference.grads_as_model(dropped)
    for l, mask in enumerate(masks):
        expected[f"layers.{l}.w_hh"] = expected[f"layers.{l}.w_hh"] * mask  # d(W ⊙ m)/dW = m
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_weight_drop_is_off_at_evaluation(mode):
    model = make_model("gru", 2, weight_drop=0.5)
    reference = TorchReference(model)
    tokens = torch.randint(0, 11, (2, NUMPY_MIN_STEPS + 3))
    model.eval()
    with GRAD_MODES[mode]():
        logits, _ = model(tokens)
    torch.testing.assert_close(logits, reference(tokens)[0], atol=1e-5, rtol=1e-5)


def test_init_state_is_zeros_per_layer_and_two_tensors_for_lstm():
    model = make_model("lstm", 3, hidden=8)
    h, c = model.init_state(5)
    assert h.shape == c.shape == (3, 5, 8)
    assert not h.any() and not c.any()
    (h,) = make_model("gru", 2, hidden=8).init_state(4)
    assert h.shape == (2, 4, 8)


def test_parameters_are_named_after_the_math():
    names = set(dict(make_model("rnn", 2).named_parameters()))
    assert names == {
        "layers.0.w_xh",
        "layers.0.w_hh",
        "layers.0.b_h",
        "layers.1.w_xh",
        "layers.1.w_hh",
        "layers.1.b_h",
        "w_y",
        "b_y",
    }


def test_splitting_a_sequence_and_carrying_the_state_equals_one_pass():
    model = make_model("gru", 2)
    tokens = torch.randint(0, 11, (2, 20))
    whole, final = model(tokens)
    first, state = model(tokens[:, :7])
    second, final2 = model(tokens[:, 7:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(final2[0], final[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        dict(cell="transformer"),
        dict(hidden_size=0),
        dict(num_layers=-1),
        dict(vocab_size=1),
        dict(dropout=1.0),
        dict(hidden_size=2.5),
        dict(weight_drop=1.0),
        dict(weight_drop=-0.1),
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        LMConfig(**bad)
