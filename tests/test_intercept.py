"""kernels.policy_mode: every aten matmul and convolution, forward and backward, under a policy per role."""
from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

import kernels
import nets
from kernels import Policy, Reduction, policy_mode
from kernels.dispatch import without_policy_mode
from nets.training.step import make_optimizer, train_step

ROOT = Path(__file__).resolve().parents[1]
# Roles told apart by their operand precision: a result shows which Reduction computed it.
BY_PRECISION = Policy(forward=Reduction("fixed"), input_grad=Reduction("fixed", precision="bf16"),
                      weight_grad=Reduction("fixed", precision="fp16"))
SEEDED = Policy(forward=Reduction("splitk", splits=4, seed=1), input_grad=Reduction("splitk", splits=3, seed=2),
                weight_grad=Reduction("splitk", splits=5, seed=3))


def leaf(tensor):
    return tensor.detach().clone().requires_grad_(True)


def operand(shape, column_major: bool, generator):
    """A leaf of `shape`, stored row-major or column-major."""
    if column_major:
        return leaf(torch.randn(shape[::-1], generator=generator).t())
    return leaf(torch.randn(shape, generator=generator))


def assert_bitwise(actual, expected, what):
    assert actual.shape == expected.shape and torch.equal(actual, expected), \
        f"{what}: {int((actual != expected).sum())} of {actual.numel()} elements differ"


@pytest.mark.parametrize("a_column_major,b_column_major,bias", list(itertools.product([False, True], repeat=3)))
def test_each_role_of_mm_and_addmm_follows_its_reduction(a_column_major, b_column_major, bias, generator):
    a, b = operand((5, 7), a_column_major, generator), operand((7, 3), b_column_major, generator)
    grad = torch.randn(5, 3, generator=generator)
    a_ref, b_ref = leaf(a), leaf(b)
    expected = kernels.matmul(a_ref, b_ref, BY_PRECISION)
    expected.backward(grad)
    with policy_mode(BY_PRECISION) as mode:
        out = torch.addmm(torch.zeros(3), a, b) if bias else a @ b
        out.backward(grad)
    assert_bitwise(out, expected, "forward")
    assert_bitwise(a.grad, a_ref.grad, "input gradient")
    assert_bitwise(b.grad, b_ref.grad, "weight gradient")
    op = "addmm" if bias else "mm"
    assert dict(mode.report.controlled) == {(op, role): 1 for role in kernels.ROLES}
    assert mode.report.share == 1.0


def test_bmm_and_baddbmm_run_one_gemm_per_batch_entry(generator):
    a, b = leaf(torch.randn(3, 5, 7, generator=generator)), leaf(torch.randn(3, 7, 2, generator=generator))
    added = torch.randn(3, 5, 2, generator=generator)
    grad = torch.randn(3, 5, 2, generator=generator)
    with policy_mode(BY_PRECISION) as mode:
        torch.bmm(a, b).backward(grad)
        scaled = torch.baddbmm(added, a.detach(), b.detach(), beta=0.5, alpha=2.0)
    entries = [(leaf(a[i]), leaf(b[i])) for i in range(3)]
    for (a_i, b_i), g in zip(entries, grad):
        kernels.matmul(a_i, b_i, BY_PRECISION).backward(g)
    assert_bitwise(a.grad, torch.stack([a_i.grad for a_i, _ in entries]), "bmm input gradient")
    assert_bitwise(b.grad, torch.stack([b_i.grad for _, b_i in entries]), "bmm weight gradient")
    products = torch.stack([kernels.matmul(a_i.detach(), b_i.detach(), BY_PRECISION) for a_i, b_i in entries])
    assert_bitwise(scaled, products * 2.0 + added * 0.5, "baddbmm")
    assert mode.report.controlled[("bmm", "weight_grad")] == 1
    assert mode.report.controlled[("baddbmm", "forward")] == 1


def test_linear_and_matmul_decompose_into_routed_gemms(generator):
    layer = nn.Linear(6, 4)
    x = torch.randn(2, 3, 6, generator=generator)
    drop_in = copy.deepcopy(layer)
    kernels.patch(drop_in, BY_PRECISION)
    with policy_mode(BY_PRECISION) as mode:
        out = layer(x)
        product = torch.matmul(x, layer.weight.detach().t())
    assert_bitwise(out, drop_in(x), "F.linear on a 3-D input")
    assert_bitwise(product, kernels.matmul(x.reshape(6, 6), layer.weight.detach().t(), BY_PRECISION).view(2, 3, 4),
                   "torch.matmul folded into one GEMM")
    assert mode.report.share == 1.0


def test_conv2d_roles_match_kernels_conv2d(generator):
    x = leaf(torch.randn(2, 3, 9, 9, generator=generator))
    w = leaf(torch.randn(4, 3, 3, 3, generator=generator))
    bias = leaf(torch.randn(4, generator=generator))
    grad = torch.randn(2, 4, 5, 5, generator=generator)
    refs = [leaf(t) for t in (x, w, bias)]
    kernels.conv2d(*refs, stride=2, padding=1, policy=BY_PRECISION).backward(grad)
    with policy_mode(BY_PRECISION) as mode:
        F.conv2d(x, w, bias, stride=2, padding=1).backward(grad)
    for name, ours, theirs in zip(("input", "weight", "bias"), (x, w, bias), refs):
        assert_bitwise(ours.grad, theirs.grad, f"{name} gradient")
    assert dict(mode.report.controlled) == {("convolution", role): 1 for role in kernels.ROLES}


def test_what_the_kernels_cannot_run_falls_through_to_torch_and_is_counted(generator):
    x, w = torch.randn(2, 4, 7, 7, generator=generator), torch.randn(4, 4, 3, 3, generator=generator)
    counts = torch.randint(0, 9, (3, 3), generator=generator)
    cases = {
        "groups": lambda: F.conv2d(x, w[:, :2], groups=2),
        "dilation": lambda: F.conv2d(x, w, dilation=2),
        "1-D": lambda: F.conv1d(x[..., 0], w[..., 0]),
        "integers": lambda: torch.mm(counts, counts),
        "mv": lambda: torch.mv(x[0, 0], x[0, 0, 0]),
        "out=": lambda: torch.mm(x[0, 0], x[0, 1], out=torch.empty(7, 7)),
    }
    for what, call in cases.items():
        with policy_mode(Reduction("splitk", splits=2)) as mode:
            out = call()
        assert torch.equal(out, call()), what
        assert mode.report.total == 1 and mode.report.share == 0.0, (what, mode.report.rows())
    gram = leaf(torch.randn(4, 6, generator=generator))
    with policy_mode() as mode:
        (gram @ gram.t()).sum().backward()
    rows = {(row["op"], row["role"]): row for row in mode.report.rows()}
    assert rows[("mm", "forward")]["controlled"] == 1
    assert rows[("mm", "in MmBackward0")]["why_native"] == {"role unknown": 2}


def test_patched_layers_keep_their_own_policy_inside_the_mode(generator):
    torch.manual_seed(0)
    model = nets.build("constnet", depth=7, widen=1, in_channels=1, num_classes=3, init="he")
    x, y = torch.randn(4, 1, 8, 8, generator=generator), torch.tensor([0, 1, 2, 0])
    kernels.patch(model, Reduction("fixed", precision="bf16"))
    expected = model(x)
    with policy_mode(Reduction("fixed")) as mode:
        out = model(x)
        F.cross_entropy(out, y).backward()
    assert_bitwise(out, expected, "patched model inside the mode")
    assert mode.report.total == 0


def train(model, policy, steps=3, seed=0):
    """A few SGD steps on fixed random digits-shaped data; the final state_dict."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with kernels.counting(), policy:
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize("net,init", [("constnet", "he"), ("leakynet", "h_h_h_h")])
@pytest.mark.parametrize("policy", [BY_PRECISION, SEEDED], ids=["fixed", "splitk"])
def test_same_bits_as_patch_on_the_papers_networks(net, init, policy):
    torch.manual_seed(0)
    model = nets.build(net, depth=7, widen=1, in_channels=1, num_classes=10, init=init)
    patched = copy.deepcopy(model)
    kernels.patch(patched, policy)
    expected = train(patched, kernels.counting())
    mode = policy_mode(policy)
    actual = train(model, mode)
    differ = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not differ, differ
    assert mode.report.share == 1.0 and mode.report.total > 0


def test_without_policy_mode_lifts_the_innermost_policy_mode(generator):
    a, b = torch.randn(3, 4, generator=generator), torch.randn(4, 5, generator=generator)
    with policy_mode() as mode:
        with without_policy_mode():
            assert _get_current_dispatch_mode() is None
            a @ b
        assert _get_current_dispatch_mode() is mode
        a @ b
    assert mode.report.total == 1
    with without_policy_mode():
        assert _get_current_dispatch_mode() is None


def test_the_training_step_runs_its_optimizer_outside_the_mode(generator):
    torch.manual_seed(0)
    model = nets.build("constnet", depth=7, widen=1, in_channels=1, num_classes=3, init="he")
    optimizer = make_optimizer(model, 0.1, 0.9, 5e-4)
    modes = []
    update = optimizer.step
    optimizer.step = lambda: (modes.append(_get_current_dispatch_mode()), update())
    x, y = torch.randn(4, 1, 8, 8, generator=generator), torch.tensor([0, 1, 2, 0])
    with policy_mode() as mode:
        train_step(model, optimizer, x, y)
    assert modes == [None]
    assert mode.report.share == 1.0 and mode.report.total > 0


def test_splits_are_capped_at_each_reduction_length(generator):
    a, b = torch.randn(3, 2, generator=generator), torch.randn(2, 5, generator=generator)
    with policy_mode(Reduction("splitk", splits=8)) as mode:
        out = a @ b
    assert_bitwise(out, kernels.matmul(a, b, Reduction("splitk", splits=2)), "capped product")
    assert mode.report.rows()[0]["capped_splits"] == {"2": 1}


def test_attention_runs_on_the_kernels_in_training_and_in_eval():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    x = torch.randn(3, 5, 8)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with policy_mode(Reduction("fixed", splits=2)) as mode:
        layer(x).sum().backward()
        layer.eval()
        with torch.no_grad():
            layer(x)
    assert mode.report.share == 1.0
    assert {("bmm", role) for role in kernels.ROLES} <= set(mode.report.controlled)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


FUNCTIONAL_RUN = """
import hashlib, sys, torch, torch.nn.functional as F, kernels

def run(mode, seed, intercept):
    \"\"\"Three SGD steps of a model made of F.conv2d, torch.bmm and F.linear under the mode named
    `intercept`; a digest of its weights.\"\"\"
    torch.manual_seed(0)
    conv, fc = torch.randn(4, 1, 3, 3, requires_grad=True), torch.randn(10, 256, requires_grad=True)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with getattr(kernels, intercept)(kernels.Reduction(mode, splits=4, seed=seed)), kernels.counting():
        for _ in range(3):
            h = F.relu(F.conv2d(x, conv, padding=1)).flatten(2)                  # (8, 4, 64)
            h = torch.bmm(torch.softmax(torch.bmm(h, h.transpose(1, 2)), -1), h)  # attention over channels
            F.cross_entropy(F.linear(h.flatten(1), fc), y).backward()
            with torch.no_grad():
                for w in (conv, fc):
                    w -= 0.01 * w.grad
                    w.grad = None
    weights = torch.cat([conv.detach().flatten(), fc.detach().flatten()])
    return hashlib.sha256(weights.numpy().tobytes()).hexdigest()

if __name__ == "__main__":
    print(run(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


def functional_run(mode: str, seed: int, intercept: str, *, in_process: bool) -> str:
    """The digest of FUNCTIONAL_RUN, computed here or in a fresh Python process."""
    if in_process:
        namespace = {}
        exec(FUNCTIONAL_RUN, namespace)
        return namespace["run"](mode, seed, intercept)
    done = subprocess.run([sys.executable, "-c", FUNCTIONAL_RUN, mode, str(seed), intercept], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("intercept", ["policy_mode", "function_policy_mode"])
def test_a_functional_model_trains_reproducibly_across_processes(intercept):
    """fixed: the same bits in another process; splitk: the same bits per seed, other bits for another seed."""
    assert functional_run("fixed", 0, intercept, in_process=True) == functional_run("fixed", 0, intercept,
                                                                                     in_process=False)
    seeded = functional_run("splitk", 3, intercept, in_process=True)
    assert seeded == functional_run("splitk", 3, intercept, in_process=False)
    assert seeded != functional_run("splitk", 4, intercept, in_process=True)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="Reduction"):
        policy_mode("fixed")
    with pytest.raises(ValueError, match="without policy_mode"):
        policy_mode(backend="native")
    with pytest.raises(ValueError, match="backend="):
        policy_mode(backend="cuda")
