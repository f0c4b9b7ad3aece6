"""Autograd edges of matmul, conv2d and Linear: double backward, zero-size dimensions, and
splits checked against the gradient roles at the forward call."""
import pytest
import torch
from torch import nn

from kernels import Linear, Reduction, conv2d, matmul

SPLIT4 = Reduction("splitk", splits=4, seed=1)


@pytest.mark.parametrize(
    "reduction",
    [None, Reduction(precision="fp16", accumulate="fp16"), Reduction(precision="bf16", accumulate="bf16"), SPLIT4],
    ids=["fixed", "fp16-accumulate", "bf16-accumulate", "splitk"],
)
def test_double_backward_is_refused_with_a_clear_error(generator, reduction):
    a = torch.randn(5, 8, generator=generator, requires_grad=True)
    b = torch.randn(8, 6, generator=generator, requires_grad=True)
    (grad_a,) = torch.autograd.grad(matmul(a, b, reduction).sum(), a)  # first order: fine
    assert grad_a.shape == a.shape
    with pytest.raises(NotImplementedError, match=r"kernels.matmul: double backward \(create_graph=True\)"):
        torch.autograd.grad(matmul(a, b, reduction).sum(), a, create_graph=True)
    x = torch.randn(2, 3, 6, 6, generator=generator, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=generator, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"kernels.conv2d: double backward.*backend='native'"):
        torch.autograd.grad(conv2d(x, w, policy=reduction).sum(), x, create_graph=True)


def test_the_native_backend_gives_higher_order_gradients(generator):
    a = torch.randn(3, 4, generator=generator, requires_grad=True)
    b = torch.randn(4, 5, generator=generator, requires_grad=True)
    (grad_a,) = torch.autograd.grad(matmul(a, b, backend="native").square().sum(), a, create_graph=True)
    (second,) = torch.autograd.grad(grad_a.sum(), b)
    (expected_a,) = torch.autograd.grad((a @ b).square().sum(), a, create_graph=True)
    assert torch.allclose(second, torch.autograd.grad(expected_a.sum(), b)[0])


def torch_and_ours(op, torch_op, *shapes, generator):
    """Outputs and input gradients of `op` and `torch_op` on the same random inputs."""
    results = []
    for function in (op, torch_op):
        inputs = [torch.randn(*shape, generator=torch.Generator().manual_seed(i)).requires_grad_()
                  for i, shape in enumerate(shapes)]
        out = function(*inputs)
        out.backward(torch.ones_like(out))
        results.append([out.detach(), *(t.grad for t in inputs)])
    return results


@pytest.mark.parametrize("m,k,n", [(0, 3, 2), (2, 0, 2), (2, 3, 0), (0, 0, 0)])
def test_matmul_with_zero_size_dimensions_is_torchs(generator, m, k, n):
    ours, reference = torch_and_ours(matmul, torch.matmul, (m, k), (k, n), generator=generator)
    for got, expected in zip(ours, reference):
        assert got.shape == expected.shape and torch.equal(got, expected)


@pytest.mark.parametrize(
    "x_shape,w_shape",
    [((2, 3, 5, 5), (0, 3, 3, 3)), ((0, 3, 5, 5), (4, 3, 3, 3)), ((2, 0, 5, 5), (4, 0, 3, 3))],
    ids=["no-output-channels", "empty-batch", "no-input-channels"],
)
def test_conv2d_with_zero_size_dimensions_gives_empty_or_zero_results(generator, x_shape, w_shape):
    """Sums over nothing are zero: the output and both gradients are zeros of their shapes (torch's
    own F.conv2d refuses some of these shapes, and gives a wrong shape for C_in = 0)."""
    x = torch.randn(*x_shape, generator=generator, requires_grad=True)
    w = torch.randn(*w_shape, generator=generator, requires_grad=True)
    out = conv2d(x, w, padding=1, policy=Reduction("splitk", splits=2))
    out.backward(torch.ones_like(out))
    assert torch.equal(out, torch.zeros(x_shape[0], w_shape[0], *x_shape[2:]))
    assert torch.equal(x.grad, torch.zeros(x_shape)) and torch.equal(w.grad, torch.zeros(w_shape))


@pytest.mark.parametrize("features,batch", [((0, 3), 4), ((3, 0), 4), ((3, 2), 0)], ids=["in=0", "out=0", "batch=0"])
def test_linear_with_zero_size_dimensions_is_torchs(features, batch):
    torch.manual_seed(0)
    reference = nn.Linear(*features)
    layer = Linear(*features, policy=Reduction("fixed"))
    layer.load_state_dict(reference.state_dict())
    for module in (reference, layer):
        module(torch.ones(batch, features[0])).sum().backward()
    assert torch.equal(layer(torch.ones(batch, features[0])), reference(torch.ones(batch, features[0])))
    assert torch.equal(layer.weight.grad, reference.weight.grad) and torch.equal(layer.bias.grad, reference.bias.grad)


def test_an_empty_reduction_takes_any_splits():
    """An empty batch makes the weight gradient's K = 0: there is nothing to split, the result is zeros."""
    x = torch.ones(0, 8, requires_grad=True)
    b = torch.ones(8, 8, requires_grad=True)
    out = matmul(x, b, Reduction("splitk", splits=8))
    out.sum().backward()
    assert out.shape == (0, 8) and x.grad.shape == (0, 8) and torch.equal(b.grad, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="forward: splits=4 exceeds the reduction length K=3"):
        Linear(3, 2, policy=SPLIT4)(torch.ones(0, 3))  # K > 0 is checked, whatever the batch


def test_matmul_and_linear_check_the_gradient_roles_at_the_forward_call(generator):
    a = torch.randn(2, 8, generator=generator)
    b = torch.randn(8, 6, generator=generator, requires_grad=True)
    with pytest.raises(ValueError, match="weight_grad: splits=4 exceeds the reduction length K=2"):
        matmul(a, b, SPLIT4)
    with pytest.raises(ValueError, match="input_grad: splits=4 exceeds the reduction length K=3"):
        matmul(torch.randn(8, 8, requires_grad=True), torch.randn(8, 3), SPLIT4)
    with pytest.raises(ValueError, match="weight_grad: splits=4 exceeds the reduction length K=2"):
        Linear(8, 6, policy=SPLIT4)(a)
    # roles that will not run are not checked (as conv2d does)
    assert matmul(a, b.detach(), SPLIT4).shape == (2, 6)
    with torch.no_grad():
        assert Linear(8, 6, policy=SPLIT4)(a).shape == (2, 6)
