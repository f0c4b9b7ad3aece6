"""nets.training.sgd.SGD against torch.optim.SGD: the same bits, interchangeable state, no torch._dynamo."""
import subprocess
import sys

import pytest
import torch

from nets.training.sgd import SGD


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 5))


def _train(model, optimizer, steps: int, start: int = 0) -> None:
    """Steps start, start + 1, ...: each on its own seeded batch, at a learning rate that changes."""
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        images, labels = torch.randn(6, 3, 8, 8, generator=generator), torch.randint(0, 5, (6,), generator=generator)
        optimizer.param_groups[0]["lr"] = (0.1, 0.05, 0.02)[step % 3]
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


def _same_bits(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 5e-4), (0.9, 0.0), (0.0, 5e-4), (0.0, 0.0)])
def test_updates_are_torch_sgds_bit_for_bit(momentum, weight_decay):
    ours, theirs = _model(), _model()
    _train(ours, SGD(ours.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay), 7)
    _train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay,
                                   foreach=False), 7)
    assert _same_bits(ours, theirs)
    assert not _same_bits(ours, _model())  # it trained


def test_a_parameter_without_gradient_is_left_alone():
    model = _model()
    frozen = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    _train(model, SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9), 3)
    assert torch.equal(model[0].weight, frozen)


@pytest.mark.parametrize("first,second", [(SGD, torch.optim.SGD), (torch.optim.SGD, SGD)],
                         ids=["this-then-torch", "torch-then-this"])
def test_state_moves_between_this_sgd_and_torchs(first, second):
    """Three steps, the state handed over to a new optimizer, three more: as six steps of one."""
    whole, halves = _model(), _model()
    _train(whole, torch.optim.SGD(whole.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=False), 6)
    before = first(halves.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    _train(halves, before, 3)
    saved = before.state_dict()
    after = second(halves.parameters(), lr=0.3, momentum=0.5, weight_decay=0.0)
    after.load_state_dict(saved)
    assert {key: after.param_groups[0][key] for key in ("momentum", "weight_decay")} == {"momentum": 0.9,
                                                                                         "weight_decay": 5e-4}
    _train(halves, after, 3, start=3)
    assert _same_bits(whole, halves)
    assert saved["param_groups"][0].keys() == torch.optim.SGD(_model().parameters(), lr=0.1).state_dict()[
        "param_groups"][0].keys()


def test_a_state_that_does_not_fit_is_refused():
    model = _model()
    saved = torch.optim.SGD(list(model.parameters())[:2], lr=0.1, nesterov=True, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="groups of sizes \\[2\\]; this one has one group of 6"):
        SGD(model.parameters(), lr=0.1).load_state_dict(saved)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, nesterov=True, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="built with {'nesterov': True}"):
        SGD(model.parameters(), lr=0.1).load_state_dict(saved)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)


def test_building_and_stepping_imports_no_dynamo():
    code = ("import sys, torch; from nets.training.sgd import SGD; m = torch.nn.Linear(2, 2); "
            "o = SGD(m.parameters(), lr=0.1, momentum=0.9); m(torch.ones(1, 2)).sum().backward(); o.step(); "
            "o.load_state_dict(o.state_dict()); print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
