"""The noise-source audit: which operations repeat bit for bit."""
import pytest
import torch
from torch import nn

import kernels
from probes.audit import audit


def small_net(generator):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def rows_by_name(rows):
    return {(row["op"], row["role"]): row for row in rows}


@pytest.mark.slow
def test_atomic_weight_gradients_are_flagged_and_nothing_else(generator):
    model = small_net(generator)
    kernels.patch(model, kernels.Policy(weight_grad=kernels.Reduction(mode="atomic", splits=4)), backend="emulate")
    x = torch.randn(4, 3, 6, 6, generator=generator)
    y = torch.randint(0, 5, (4,), generator=generator)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = rows_by_name(audit(model, x, y))
    noisy = {key for key, row in rows.items() if not row["deterministic"]}
    # emulated atomics draw a fresh chunk order per element and call: over >= 72 weight-gradient
    # elements with 4 chunks, two calls agreeing on every bit has negligible probability
    assert noisy == {("conv 0", "weight_grad"), ("conv 3", "weight_grad"), ("linear 5", "weight_grad"),
                     ("training step", "all")}, noisy
    assert rows[("conv 0", "weight_grad")]["n_differ"] > 0 and rows[("conv 0", "weight_grad")]["max_ulp"] >= 1
    for key in [("batchnorm 1", "forward"), ("batchnorm 1", "backward"), ("global average pool", "backward"),
                ("max_pool2d 2x2", "backward"), ("cross entropy", "backward"), ("sgd step", "update")]:
        assert rows[key]["deterministic"], key
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "audit must not change the model"


def test_seeded_splitk_counts_as_deterministic(generator):
    model = small_net(generator)
    kernels.patch(model, kernels.Reduction(mode="splitk", splits=3, seed=9), backend="emulate")
    x = torch.randn(4, 3, 6, 6, generator=generator)
    y = torch.tensor([1, 4, 0, 2])
    rows = audit(model, x, y, runs=3)
    assert all(row["deterministic"] for row in rows), [row for row in rows if not row["deterministic"]]
    with pytest.raises(ValueError, match="runs"):
        audit(model, x, y, runs=1)
