"""A backward draws its call numbers from the counter its forward drew from, on whichever thread
and inside whichever counting block it runs: torch runs a CUDA graph's backward on a device thread
of its own, where the context variables of the thread that called backward() (kernels.counting)
are unset, and the numbers must be those the CPU draws. On CPU a new Python thread stands in for
that thread; outside the forward's block and inside another block are checked too."""
import threading
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from kernels import CallCounter, Reduction, conv2d, counting, current_counter, matmul, policy_mode

SPLITK = Reduction("splitk", splits=4, seed=3, granularity="element", accumulate="bf16")


def conv_problem(generator):
    x = torch.randn(2, 8, 6, 6, generator=generator)
    w = torch.randn(6, 8, 3, 3, generator=generator)
    return x, w, torch.randn(2, 6, 6, 6, generator=generator)


def matmul_problem(generator):
    a = torch.randn(12, 64, generator=generator)
    b = torch.randn(64, 10, generator=generator)
    return a, b, torch.randn(12, 10, generator=generator)


PROBLEMS = {
    "conv2d": (conv_problem, lambda x, w: conv2d(x, w, padding=1, policy=SPLITK)),
    "matmul": (matmul_problem, lambda a, b: matmul(a, b, SPLITK)),
}


def in_a_thread(work):
    """Run `work()` on a new thread, which starts with no context variables set."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=work()))
    thread.start()
    thread.join()
    assert "value" in result, "the backward raised on its thread"
    return result["value"]


def forward_and_backward(op, first, second, grad, start, where="inside"):
    """Outputs and gradients, the backward run inside the forward's counting block, outside it,
    inside another block, or on a new thread; and the forward counter's next call number."""
    first, second = first.clone().requires_grad_(), second.clone().requires_grad_()
    counter, other = CallCounter(start), CallCounter(100)

    def backward():
        return torch.autograd.grad(out, (first, second), grad)

    with counting(counter):
        out = op(first, second)
        if where == "inside":
            grads = backward()
    if where == "thread":
        grads = in_a_thread(backward)
    elif where != "inside":
        with counting(other) if where == "another block" else nullcontext():
            grads = backward()
    assert other.next_call == 100, "the backward drew from the counter around it, not its forward's"
    return (out.detach(), *grads), counter.next_call


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # on CUDA, every backward runs on torch's device thread


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("where", ["thread", "outside", "another block"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_a_backward_draws_from_its_forwards_counter(generator, name, where, device):
    make, op = PROBLEMS[name]
    operands = [t.to(device) for t in make(generator)]
    default_before = current_counter().next_call
    got, next_call = forward_and_backward(op, *operands, start=0, where=where)
    assert next_call == 3, "forward, input_grad and weight_grad each take a number from the forward's counter"
    assert current_counter().next_call == default_before, "the process's default counter was drawn from"
    inside, _ = forward_and_backward(op, *operands, start=0)
    for g, expected in zip(got, inside):
        assert torch.equal(g, expected)
    later, _ = forward_and_backward(op, *operands, start=5, where=where)
    assert not any(torch.equal(g, e) for g, e in zip(later[1:], inside[1:])), "call numbers had no effect"


@pytest.mark.parametrize("device", DEVICES)
def test_the_dispatch_modes_backward_draws_from_its_forwards_counter(generator, device):
    x, w, grad = (t.to(device) for t in conv_problem(generator))

    def run(start, where):
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        counter, other = CallCounter(start), CallCounter(100)
        with policy_mode(SPLITK):
            with counting(counter):
                out = F.conv2d(xg, wg, padding=1)
                if where == "inside":
                    grads = torch.autograd.grad(out, (xg, wg), grad)
            if where != "inside":
                with counting(other) if where == "another block" else nullcontext():
                    grads = torch.autograd.grad(out, (xg, wg), grad)
        assert (counter.next_call, other.next_call) == (start + 3, 100)
        return out.detach(), *grads

    default_before = current_counter().next_call
    inside = run(0, "inside")
    for where in ("outside", "another block"):
        for got, expected in zip(run(0, where), inside):
            assert torch.equal(got, expected)
    assert current_counter().next_call == default_before
    later = run(5, "outside")
    assert not any(torch.equal(g, e) for g, e in zip(later[1:], inside[1:])), "call numbers had no effect"
