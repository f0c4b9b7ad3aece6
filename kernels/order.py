"""The splitk summation order: a pure function of (seed, call number, order index).

Definition (shared by every backend, so their chunk orders agree bit for bit; all arithmetic
modulo 2**32):

    fmix32(x)           murmur3's 32-bit finalizer
    call key  k         fmix32(fmix32(seed ^ 0x9E3779B9) ^ call)
    permutation table   PERMUTATIONS (256) orders of the chunks per call: row t lists the chunk
                        ids s sorted by (fmix32(fmix32(k ^ (t+1)*0x9E3779B9) ^ s*0x9E3779B9), s)
    order index i       0 for granularity "call"; for "tile" the row-major index of the
                        ORDER_TILE x ORDER_TILE output tile holding (m, n); for "element" m*N + n
    order of (m, n)     table row fmix32(k ^ i) mod PERMUTATIONS; the chunk partial sums are
                        added left to right along it: ((P[o0] + P[o1]) + P[o2]) + ...

The table is tiny and built on the host, so every backend reads the very same orders; each
element costs one hash, whatever the number of chunks. Fixed mode adds chunks in index order
0, 1, ..., splits-1. The call number comes from a `CallCounter` (kernels.calls), so a sequence
of calls is replayable from the seed.
"""
from __future__ import annotations

import torch

ORDER_TILE = 64
PERMUTATIONS = 256
GRANULARITY_CODES = {"call": 0, "tile": 1, "element": 2}
GOLDEN = 0x9E3779B9
MASK32 = 0xFFFFFFFF
FMIX_C1 = 0x85EBCA6B
FMIX_C2 = 0xC2B2AE35


def fmix32(x: int) -> int:
    """murmur3 finalizer on a Python int (the host side of the order function)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * FMIX_C1) & MASK32
    x ^= x >> 13
    x = (x * FMIX_C2) & MASK32
    x ^= x >> 16
    return x


def call_key(seed: int, call: int) -> int:
    """The 32-bit key of one seeded call."""
    return fmix32(fmix32((seed & MASK32) ^ GOLDEN) ^ (call & MASK32))


def fmix32_tensor(x: torch.Tensor) -> torch.Tensor:
    """murmur3 finalizer on an int64 tensor holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * FMIX_C1) & MASK32
    x = x ^ (x >> 13)
    x = (x * FMIX_C2) & MASK32
    return x ^ (x >> 16)


def order_index(m: int, n: int, granularity: str, device=None) -> torch.Tensor:
    """Order index of every element of an (m, n) output, as int64 in [0, 2**32)."""
    if granularity == "call":
        return torch.zeros(1, 1, dtype=torch.int64, device=device)
    rows = torch.arange(m, dtype=torch.int64, device=device)[:, None]
    cols = torch.arange(n, dtype=torch.int64, device=device)[None, :]
    if granularity == "tile":
        tiles_n = -(-n // ORDER_TILE)
        return (rows // ORDER_TILE) * tiles_n + cols // ORDER_TILE
    return (rows * n + cols) & MASK32


def permutation_table(key: int, splits: int, device=None) -> torch.Tensor:
    """The call's PERMUTATIONS orders of `splits` chunks: (PERMUTATIONS, splits) int64."""
    rows = (torch.arange(1, PERMUTATIONS + 1, dtype=torch.int64) * GOLDEN) & MASK32
    salts = (torch.arange(splits, dtype=torch.int64) * GOLDEN) & MASK32
    ranks = fmix32_tensor(fmix32_tensor(rows ^ key)[:, None] ^ salts[None, :])
    unique = ranks * splits + torch.arange(splits, dtype=torch.int64)[None, :]
    return torch.argsort(unique, dim=1).to(device)


def permutation_ids(key: int, index: torch.Tensor) -> torch.Tensor:
    """Which table row orders each order index."""
    return fmix32_tensor(index ^ key) % PERMUTATIONS


def chunk_order(key: int, index: torch.Tensor, splits: int) -> torch.Tensor:
    """Chunk ids in summation order: shape (splits, *index.shape); position 0 is added first."""
    table = permutation_table(key, splits, index.device)
    return table[permutation_ids(key, index)].movedim(-1, 0)


def chunk_bounds(k: int, splits: int) -> list[tuple[int, int]]:
    """Balanced split of range(k) into `splits` non-empty chunks: [floor(s*k/S), floor((s+1)*k/S))."""
    return [(s * k // splits, (s + 1) * k // splits) for s in range(splits)]
