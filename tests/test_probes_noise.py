"""Workloads, the noise-magnitude probe and its statistics, against float64 references."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from probes.noise import error_statistics, noise_magnitude, run_spread
from nets.workloads import TrainingSetup, train
from probes.ops import ConvShape, MatmulShape, make_inputs, parse_shape, reduction_length, reference_op, run_op

FP32_EPS = 2.0 ** -24  # unit roundoff of fp32
OPS_AND_SHAPES = [("matmul", MatmulShape(9, 70, 11)), ("conv_forward", ConvShape(2, 5, 7, 9, 3, 2, 1)),
                  ("conv_dgrad", ConvShape(2, 5, 7, 9, 3, 2, 1)), ("conv_wgrad", ConvShape(2, 5, 7, 9, 1, 1, 0))]


def test_parse_shape_and_reduction_lengths():
    assert parse_shape("matmul", "64x256x48") == MatmulShape(64, 256, 48)
    assert parse_shape("conv_wgrad", "8x16x32x16") == ConvShape(8, 16, 32, 16, 3, 1, 1)
    assert parse_shape("conv_dgrad", "8x16x32x15k1s2p0") == ConvShape(8, 16, 32, 15, 1, 2, 0)
    shape = ConvShape(8, 16, 32, 15, 3, 2, 1)
    assert shape.out_size == 8
    assert [reduction_length(op, shape) for op in ("conv_forward", "conv_dgrad", "conv_wgrad")] == [144, 288, 512]
    with pytest.raises(ValueError, match="MxKxN"):
        parse_shape("matmul", "64x256")
    with pytest.raises(ValueError, match="op="):
        parse_shape("conv", "1x2x3x4")


@pytest.mark.parametrize("op,shape", OPS_AND_SHAPES)
def test_ops_match_the_float64_reference_within_the_fp32_bound(op, shape):
    inputs = make_inputs(op, shape, seed=3)
    out = run_op(op, shape, inputs, kernels.Reduction(mode="splitk", splits=3), "emulate")
    reference = reference_op(op, shape, inputs)
    # |error| <= K * eps * sum |terms| for a K-term fp32 sum (the standard a-priori bound);
    # sum |terms| is the same op on the absolute values of the operands
    magnitudes = reference_op(op, shape, {name: value.abs() for name, value in inputs.items()})
    bound = reduction_length(op, shape) * FP32_EPS * magnitudes
    excess = (out.double() - reference).abs() - bound
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert bool((excess <= 0).all()), f"{op}: {(excess > 0).sum()} elements beyond the bound, worst {excess.max()}"


def test_conv_reference_is_torchs_float64_gradient():
    shape = ConvShape(2, 3, 4, 6)
    inputs = make_inputs("conv_wgrad", shape, seed=1)
    x = inputs["x"].double()
    w = inputs["w"].double().requires_grad_(True)
    F.conv2d(x, w, padding=1).backward(inputs["grad_out"].double())
    assert torch.equal(reference_op("conv_wgrad", shape, inputs), w.grad)


def test_error_statistics_count_ulps_to_the_rounded_reference(generator):
    reference = torch.randn(1000, generator=generator, dtype=torch.float64)
    rounded = reference.float()
    stats = error_statistics(rounded, reference)
    assert stats["ulp"] == {"median": 0.0, "p99": 0.0, "max": 0.0}
    assert stats["rel"]["max"] <= FP32_EPS  # rounding to nearest: relative error <= u
    nudged = rounded.clone()
    for _ in range(3):
        nudged[17] = torch.nextafter(nudged[17], torch.tensor(float("inf")))
    assert error_statistics(nudged, reference)["ulp"]["max"] == 3.0


def test_run_spread():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = a.clone()
    b[2] = torch.nextafter(b[2], torch.tensor(0.0))
    assert run_spread([a, a.clone()]) == {"frac_differ": 0.0, "max_ulp": 0.0, "runs": 2}
    assert run_spread([a, a.clone(), b]) == {"frac_differ": 0.25, "max_ulp": 1.0, "runs": 3}


def test_noise_magnitude_fixed_is_repeatable_and_splitk_spreads():
    shape = MatmulShape(16, 256, 12)
    fixed = noise_magnitude("matmul", shape, kernels.Reduction(), "emulate", repeats=3)
    assert fixed["spread"] == {"frac_differ": 0.0, "max_ulp": 0.0, "runs": 3}
    # a typical fp32 dot of K=256 terms errs by ~sqrt(K) * eps relative; K * eps bounds the median
    assert fixed["error"]["rel"]["median"] < 256 * FP32_EPS
    splitk = noise_magnitude("matmul", shape, kernels.Reduction(mode="splitk", splits=8), "emulate", repeats=3)
    assert splitk["spread"]["frac_differ"] > 0.1 and splitk["spread"]["max_ulp"] >= 1
    fp16 = noise_magnitude("matmul", shape, kernels.Reduction(precision="fp16"), "emulate", repeats=2)
    # fp16 operands carry a relative rounding error of up to 2**-11 each: the median error of
    # the products' sum sits near that scale, far above fp32's
    assert 2.0 ** -16 < fp16["error"]["rel"]["median"] < 2.0 ** -8
    with pytest.raises(ValueError, match="repeats"):
        noise_magnitude("matmul", shape, kernels.Reduction(), "emulate", repeats=0)


@pytest.mark.slow
def test_training_runs_replay_bit_for_bit():
    setup = TrainingSetup(steps=2, net_options=(("depth", 7), ("widen", 1), ("init", "he")))
    policy = kernels.Policy(weight_grad=kernels.Reduction(mode="splitk", splits=4, seed=3))
    first, second = train(setup, policy, "emulate"), train(setup, policy, "emulate")
    assert len(first["losses"]) == 2 and first["losses"] == second["losses"]
    for a, b in zip(first["states"], second["states"]):
        assert all(torch.equal(a[key], b[key]) for key in a)
