import pytest
import torch

from model import grad_clipping


def params_with_grads(seed: int, scale: float) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(4, 5), (5,), (3, 3, 2)]]
    for p in params:
        p.grad = torch.randn_like(p) * scale
    return params


@pytest.mark.parametrize("scale", [0.01, 10.0], ids=["below-threshold", "above-threshold"])
def test_clipping_equals_clip_grad_norm(scale):
    ours, theirs = params_with_grads(0, scale), params_with_grads(0, scale)
    theta = 1.0
    norm = grad_clipping(ours, theta)
    expected_norm = torch.nn.utils.clip_grad_norm_(theirs, theta)
    torch.testing.assert_close(norm, expected_norm)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_clipping_scales_every_gradient_by_theta_over_norm():
    params = params_with_grads(1, 10.0)
    before = [p.grad.clone() for p in params]
    norm = torch.sqrt(sum((g**2).sum() for g in before))
    grad_clipping(params, 2.0)
    for p, g in zip(params, before):
        torch.testing.assert_close(p.grad, g * 2.0 / norm)
    assert torch.sqrt(sum((p.grad**2).sum() for p in params)).item() == pytest.approx(2.0, rel=1e-5)


def test_gradients_below_threshold_are_untouched():
    params = params_with_grads(2, 0.001)
    before = [p.grad.clone() for p in params]
    grad_clipping(params, 5.0)
    for p, g in zip(params, before):
        assert torch.equal(p.grad, g)
