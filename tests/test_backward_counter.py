"""A backward pass draws its call numbers from the counting() block around its backward() call,
also where torch runs it on a device thread of its own (every CUDA backward), where the caller's
context variables are unset. On CPU a new Python thread, inside the caller's block, stands in for
that thread; on CUDA every backward is the real thing."""
import threading

import pytest
import torch
import torch.nn.functional as F

from kernels import CallCounter, Reduction, conv2d, counting, current_counter, matmul, policy_mode

SPLITK = Reduction("splitk", splits=4, seed=3, granularity="element", accumulate="bf16")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


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
    "policy_mode": (conv_problem, lambda x, w: F.conv2d(x, w, padding=1)),
}


def in_a_thread(work):
    """Run `work()` on a new thread, which starts with no context variables set."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=work()))
    thread.start()
    thread.join()
    assert "value" in result, "the backward raised on its thread"
    return result["value"]


def forward_then_backward(name, operands, start, on_a_thread=False):
    """The op's output under a counter from 0, then its gradients under a counter from `start`
    (run on a new thread inside that block, or on this one); the two counters' next numbers."""
    _, op = PROBLEMS[name]
    first, second, grad = (t.clone() for t in operands)
    first.requires_grad_()
    second.requires_grad_()
    forward_counter, backward_counter = CallCounter(0), CallCounter(start)
    with policy_mode(SPLITK) if name == "policy_mode" else torch.enable_grad():
        with counting(forward_counter):
            out = op(first, second)
        with counting(backward_counter):
            def backward():
                return torch.autograd.grad(out, (first, second), grad)

            grads = in_a_thread(backward) if on_a_thread else backward()
    return (out.detach(), *grads), (forward_counter.next_call, backward_counter.next_call - start)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PROBLEMS)
def test_a_backward_draws_from_the_block_around_it(generator, name, device):
    make, _ = PROBLEMS[name]
    operands = [t.to(device) for t in make(generator)]
    default_before = current_counter().next_call
    got, drawn = forward_then_backward(name, operands, start=0)
    assert drawn == (1, 2), "forward from its block, input_grad and weight_grad from the backward's"
    assert current_counter().next_call == default_before, "the process's default counter was drawn from"
    in_block, _ = forward_then_backward(name, operands, start=0)  # the same numbers: the same bits
    assert all(torch.equal(g, e) for g, e in zip(got, in_block))
    later, _ = forward_then_backward(name, operands, start=5)
    assert torch.equal(later[0], got[0])
    assert not any(torch.equal(g, e) for g, e in zip(later[1:], got[1:])), "call numbers had no effect"


@pytest.mark.parametrize("name", ["conv2d", "matmul"])
def test_a_backward_on_a_thread_without_a_block_draws_from_the_callers(generator, name):
    """The device thread's case: the roles run where no counting() block is set."""
    make, _ = PROBLEMS[name]
    operands = make(generator)
    on_this_thread, _ = forward_then_backward(name, operands, start=7)
    on_a_thread, drawn = forward_then_backward(name, operands, start=7, on_a_thread=True)
    assert drawn == (1, 2)
    assert all(torch.equal(g, e) for g, e in zip(on_a_thread, on_this_thread))


def test_blocks_that_threads_close_out_of_order_leave_the_innermost_open_one():
    """A thread's block may close while a later block of another thread stays open."""
    from kernels import calls

    entered, release = threading.Event(), threading.Event()
    theirs, mine = CallCounter(), CallCounter()

    def other_thread():
        with counting(theirs):
            entered.set()
            release.wait()

    thread = threading.Thread(target=other_thread)
    thread.start()
    entered.wait()
    with counting(mine):
        release.set()
        thread.join()
        assert calls._OPEN[-1] is mine and theirs not in calls._OPEN
    assert mine not in calls._OPEN
