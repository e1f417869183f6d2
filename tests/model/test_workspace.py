"""Reused buffers must never be handed out while anything still refers to them: checked directly, and through
training patterns that keep tensors alive across steps (oracle: torch.nn with the same weights)."""

import pytest
import torch
import torch.nn.functional as F

from model import workspace
from tests.model.test_lm import CELLS, make_model
from tests.model.torch_reference import TorchReference


def test_the_reference_counts_this_module_relies_on_behave_as_expected():
    assert workspace.ENABLED  # the pinned torch: if this fails, buffers are no longer reused (slower, still right)


def test_a_released_buffer_is_reused_and_a_held_one_is_not():
    workspace.clear()
    like = torch.empty(0)
    a = workspace.buffer("t", (4, 5), like)
    b = workspace.buffer("t", (4, 5), like)
    assert a.data_ptr() != b.data_ptr()
    address = a.data_ptr()
    del a
    assert workspace.buffer("t", (4, 5), like).data_ptr() == address  # released: reused
    view = workspace.buffer("t", (4, 5), like)[1:]  # only a view of it survives
    assert workspace.buffer("t", (4, 5), like).data_ptr() != view.data_ptr() - 5 * 4
    assert workspace.buffer("t", (3, 5), like).shape == (3, 5)  # another shape: another buffer


def test_a_buffer_saved_for_backward_is_not_reused_until_backward_ran():
    workspace.clear()
    x = torch.randn(4, requires_grad=True)

    class Save(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            buf = workspace.buffer("saved", (4,), x).copy_(x)
            ctx.save_for_backward(buf)
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            (buf,) = ctx.saved_tensors
            return grad * buf

    y = Save.apply(x)
    saved_address = y.grad_fn.saved_tensors[0].data_ptr()
    assert workspace.buffer("saved", (4,), x).data_ptr() != saved_address
    y.sum().backward()
    torch.testing.assert_close(x.grad, x.detach())
    del y
    assert workspace.buffer("saved", (4,), x).data_ptr() == saved_address


@pytest.mark.parametrize("cell", CELLS)
def test_two_forward_passes_before_one_backward_give_torch_nn_gradients(cell):
    """Gradient accumulation: the first pass's buffers are still in its graph when the second pass runs."""
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
    """A trainer carries the final state to the next batch and may keep outputs; later steps must not write
    into them."""
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
