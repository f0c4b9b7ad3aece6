"""Measurements: channel symmetry, bitwise divergence, accumulation order, noise, device records.

Importing this package touches neither CUDA nor triton; probes that run kernels import them
when called.
"""
from .compare import Comparison, compare, compare_dicts
from .device import describe_device, device_info
from .fingerprint import fingerprint
from .symmetry import (
    LayerSymmetry,
    backward_correlation,
    effective_width,
    forward_correlation,
    layer_symmetry,
    mean_dissimilarity,
    model_symmetry,
)
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
    "layer_symmetry",
    "mean_dissimilarity",
    "model_symmetry",
    "ordered_bits",
    "ulp_distance",
]
