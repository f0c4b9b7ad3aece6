"""Run options: presets and overrides, resumable changes, the policy and numerics they map to."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kernels import Policy, Reduction, patch
from nets.training.config import RunConfig, build_config, lr_milestone_epochs, resumed_config
from nets.training.models import build_model, mlp_init_options
from nets.training.numerics import numerics_from_config, policy_from_config, resolve_device, torch_switches

CPU = torch.device("cpu")


def test_quick_preset_is_a_small_zero_init_constnet_on_digits_with_splitk_noise():
    config = build_config("quick", {})
    assert (config.net, config.init, config.dataset, config.reduction) == ("constnet", "zero", "digits", "splitk")
    assert config.epochs is not None and config.steps is None


def test_paper_preset_is_the_papers_recipe():
    config = build_config("paper", {})
    assert (config.net, config.init, config.depth, config.widen) == ("constnet", "zero", 16, 10)
    assert (config.dataset, config.batch_size, config.lr, config.momentum, config.weight_decay) == (
        "cifar10", 128, 0.03, 0.9, 5e-4)
    assert (config.epochs, config.lr_gamma) == (300, 0.2)
    # x0.2 at E-140, E-80, E-40 of 300 epochs.
    assert lr_milestone_epochs(config.lr_milestones, config.epochs) == [160, 220, 260]


def test_explicit_options_override_the_preset():
    config = build_config("paper", {"lr": 0.1, "steps": 50, "reduction": "fixed"})
    assert (config.lr, config.steps, config.epochs, config.reduction) == (0.1, 50, None, "fixed")
    assert config.widen == 10, "options not given keep the preset's value"


def test_another_net_takes_its_own_defaults_unless_given():
    assert build_config("quick", {"net": "wrn"}).init == "he"
    assert build_config("quick", {"net": "leakynet"}).init is None
    mlp = build_config("quick", {"net": "mlp"})
    assert (mlp.depth, mlp.widen, mlp.init) == (2, 128, "replicas=1")
    assert build_config("quick", {"net": "leakynet", "init": "1_ii_ii_ii"}).init == "1_ii_ii_ii"


def test_every_option_round_trips_through_a_dict():
    config = build_config("quick", {"noise_seed": 5, "forward": "fixed", "dtype": "bf16"})
    assert RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown run options"):
        RunConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_relative_and_absolute_milestones():
    assert lr_milestone_epochs("E-140,E-80,E-40", 200) == [60, 120, 160]
    assert lr_milestone_epochs("30, 10", 50) == [10, 30]
    assert lr_milestone_epochs("", 50) == []
    with pytest.raises(ValueError, match="not an epoch"):
        lr_milestone_epochs("ten", 50)


def test_a_resumed_run_may_only_change_its_length():
    saved = build_config("quick", {"steps": 10})
    assert resumed_config(saved, {"steps": 20}).steps == 20
    assert resumed_config(saved, {"epochs": 3}) == build_config("quick", {"epochs": 3})
    assert resumed_config(saved, {"reduction": "splitk"}) == saved, "an unchanged option is fine"
    with pytest.raises(ValueError, match="--lr=0.5"):
        resumed_config(saved, {"lr": 0.5})


def test_policy_uses_shared_options_and_per_role_overrides():
    config = build_config("quick", {"reduction": "fixed", "weight_grad": "splitk", "splits": 4, "noise_seed": 9,
                                    "granularity": "tile", "dtype": "fp16", "accumulate": "bf16"})
    policy = policy_from_config(config)
    shared = {"splits": 4, "seed": 9, "granularity": "tile", "precision": "fp16", "accumulate": "bf16"}
    assert policy == Policy(Reduction("fixed", **shared), Reduction("fixed", **shared), Reduction("splitk", **shared))


def test_noisy_modes_default_to_eight_splits_and_fixed_to_one():
    policy = policy_from_config(build_config("quick", {"reduction": "splitk", "forward": "fixed"}))
    assert (policy.forward.splits, policy.input_grad.splits) == (1, 8)


def test_native_runs_torch_kernels_unpatched():
    config = build_config("quick", {"reduction": "native"})
    numerics = numerics_from_config(config, CPU)
    assert policy_from_config(config) is None and numerics.policy is None
    assert numerics.to_dict()["backends"] == {"forward": "native", "input_grad": "native", "weight_grad": "native"}
    assert numerics.deterministic_torch is False
    assert numerics_from_config(build_config("quick", {"reduction": "native", "native_deterministic": True}),
                                CPU).deterministic_torch
    autocast = numerics_from_config(build_config("quick", {"reduction": "native", "dtype": "bf16"}), CPU)
    assert autocast.autocast_dtype == "bf16"


def test_kernel_runs_resolve_to_emulate_on_cpu_and_say_when_atomic_is_emulated():
    numerics = numerics_from_config(build_config("quick", {"reduction": "splitk", "input_grad": "atomic"}), CPU)
    assert numerics.backend == "emulate" and numerics.atomic_emulated and numerics.deterministic_torch
    assert not numerics_from_config(build_config("quick", {"reduction": "splitk"}), CPU).atomic_emulated


@pytest.mark.parametrize("overrides, message", [
    ({"reduction": "native", "forward": "splitk"}, "--forward need --reduction fixed"),
    ({"reduction": "native", "accumulate": "bf16"}, "--accumulate applies to our kernels"),
    ({"native_deterministic": True}, "applies to --reduction native only"),
    ({"noise_seed": 2**32}, "--noise-seed"),
    ({"splits": 0}, "--splits=0"),
    ({"dropout": -0.1}, "--dropout"),
    ({"net": "resnet"}, "--net='resnet'"),
])
def test_invalid_combinations_name_the_option(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config("quick", overrides)


def test_tf32_native_and_cuda_device_need_a_gpu():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        numerics_from_config(build_config("quick", {"reduction": "native", "dtype": "tf32"}), CPU)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device=cuda needs a CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_splits_are_capped_at_each_layers_reduction_length_and_the_caps_reported():
    model = build_model(build_config("quick", {"depth": 7, "widen": 1}), 1, (8, 8), 10)
    smallest_batch = torch.zeros(5, 1, 8, 8)
    whole = patch(model, Reduction("fixed", splits=10**6), example_input=smallest_batch).caps
    # weight-gradient lengths: the batch times each layer's output positions (8x8, 4x4 after a stride, 1 for fc)
    assert (whole["stem"]["weight_grad"], whole["blocks.1.conv"]["weight_grad"], whole["fc"]["weight_grad"]) == \
        (5 * 64, 5 * 16, 5), whole
    policy = Policy(forward=Reduction("splitk", splits=12), input_grad=Reduction("fixed", splits=12),
                    weight_grad=Reduction("atomic", splits=12))
    capped = patch(model, policy, example_input=smallest_batch).caps
    assert capped == {"stem": {"forward": 9}, "fc": {"input_grad": 10, "weight_grad": 5}}, capped
    assert model.stem.policy.forward == Reduction("splitk", splits=9)
    assert model.stem.policy.input_grad.splits == 12 and model.stem.policy.weight_grad.mode == "atomic"
    assert model.fc.policy.input_grad == Reduction("fixed", splits=10)
    assert patch(model, policy, example_input=smallest_batch).caps == capped, "patching again caps alike"


def test_torch_switches_are_restored_after_the_run():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.allow_tf32,
              torch.utils.deterministic.fill_uninitialized_memory)
    numerics = numerics_from_config(build_config("quick", {"reduction": "fixed"}), CPU)
    with torch_switches(numerics, CPU):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.allow_tf32 is False
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.allow_tf32,
            torch.utils.deterministic.fill_uninitialized_memory) == before


def test_torch_switches_set_determinism_without_importing_inductor():
    """Without torch._inductor imported, the switch sets torch's eager flag alone (importing
    inductor's configuration costs a run's start 1.4-1.6 s); once it is imported, both flags."""
    code = """if True:
        import sys, torch
        from nets.training.config import build_config
        from nets.training.numerics import numerics_from_config, torch_switches
        numerics = numerics_from_config(build_config("quick", {}), torch.device("cpu"))
        with torch_switches(numerics, torch.device("cpu")):
            print(torch.are_deterministic_algorithms_enabled(), "torch._inductor.config" in sys.modules)
        import torch._inductor.config as inductor
        with torch_switches(numerics, torch.device("cpu")):
            print(inductor.deterministic)
        print(torch.are_deterministic_algorithms_enabled(), inductor.deterministic)
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False", "True", "False", "False"], result.stdout


def test_model_options_per_network():
    digits = (1, (8, 8), 10)
    mlp = build_model(build_config("quick", {"net": "mlp", "widen": 12, "init": "replicas=4,noise=0.5"}), *digits)
    assert (mlp.hidden.in_features, mlp.hidden.out_features, mlp.replicas, mlp.noise) == (64, 12, 4, 0.5)
    wrn = build_model(build_config("quick", {"net": "wrn", "depth": 10, "widen": 1}), *digits)
    assert type(wrn).__name__ == "WideResNet"
    leaky = build_model(build_config("quick", {"net": "leakynet", "depth": 7, "widen": 1, "init": "1_i_i_h"}), *digits)
    assert leaky.letters == "1iih"
    assert mlp_init_options("replicas=2") == {"replicas": 2}
    with pytest.raises(ValueError, match="replicas=R"):
        mlp_init_options("copies=2")
    with pytest.raises(ValueError, match="--init='zero' is not allowed for --net wrn"):
        build_model(build_config("quick", {"net": "wrn", "depth": 10, "init": "zero"}), *digits)
    with pytest.raises(ValueError, match="--depth=7 is not allowed for --net mlp"):
        build_model(build_config("quick", {"net": "mlp", "depth": 7}), *digits)
