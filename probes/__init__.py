"""Measurements: channel symmetry, bitwise divergence, accumulation order, noise, device records.

Instruments take tensors, models or reducers as arguments; whatever builds a network or a
training run lives above them, in nets. Modules: symmetry (weight correlations, effective
width), perturbation (symmetry-breaking perturbation of features), ulp / compare / fingerprint
(bitwise divergence), repeat (which bits differ between repeated runs), reveal (summation tree
recovery), ops (seeded single-op workloads), noise (error and run-to-run spread), audit
(non-deterministic ops of a training step), timing (kernels against torch), device (NVML
records), table (text tables). Importing this package touches neither CUDA nor triton.
"""
from .compare import Comparison, compare, compare_dicts
from .device import describe_device, device_info
from .fingerprint import fingerprint
from .symmetry import (
    LayerSymmetry,
    backward_correlation,
    effective_width,
    forward_correlation,
    mean_dissimilarity,
    model_symmetry,
    state_dict_symmetry,
    symmetry_report,
    weight_symmetry,
)
from .perturbation import perturbation_ratio, symmetry_perturbation
from .ulp import ordered_bits, ulp_distance

__all__ = [
    "Comparison",
    "LayerSymmetry",
    "backward_correlation",
    "compare",
    "compare_dicts",
    "describe_device",
    "device_info",
    "effective_width",
    "fingerprint",
    "forward_correlation",
    "mean_dissimilarity",
    "model_symmetry",
    "ordered_bits",
    "perturbation_ratio",
    "state_dict_symmetry",
    "symmetry_perturbation",
    "symmetry_report",
    "ulp_distance",
    "weight_symmetry",
]
