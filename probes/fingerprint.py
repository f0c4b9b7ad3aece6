"""Stable hashes of tensors and of nested containers of tensors (state_dicts, optimizer states).

A tensor's fingerprint is the sha256 of its dtype, its shape and its raw bytes (moved to the
CPU and made contiguous, so the device and the strides do not matter; bytes are in the host's
byte order, little-endian on every machine this project targets). A mapping hashes its
entries in sorted key order, a list/tuple in its own order; plain Python scalars (int, float,
str, bool, None) hash by their JSON text. Equal fingerprints mean equal bits.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch


def _tensor_digest(x: torch.Tensor) -> str:
    x = x.detach().cpu().contiguous()
    header = f"tensor|{str(x.dtype).replace('torch.', '')}|{list(x.shape)}|".encode()
    payload = x.reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b""
    return hashlib.sha256(header + payload).hexdigest()


def fingerprint(x) -> str:
    """sha256 hex digest of a tensor, or of a (nested) mapping / sequence holding tensors."""
    if isinstance(x, torch.Tensor):
        return _tensor_digest(x)
    if isinstance(x, Mapping):
        keys = sorted(x, key=str)
        if len({str(key) for key in keys}) != len(keys):
            raise ValueError("fingerprint: mapping keys must stay distinct when written as text")
        parts = [f"{key}={fingerprint(x[key])}" for key in keys]
        return hashlib.sha256(("mapping|" + ";".join(parts)).encode()).hexdigest()
    if isinstance(x, (list, tuple)):
        parts = [fingerprint(item) for item in x]
        return hashlib.sha256(("sequence|" + ";".join(parts)).encode()).hexdigest()
    if x is None or isinstance(x, (bool, int, float, str)):
        return hashlib.sha256(("scalar|" + json.dumps(x)).encode()).hexdigest()
    raise TypeError(
        f"fingerprint takes tensors, mappings, lists/tuples and int/float/str/bool/None; got {type(x).__name__}"
    )
