"""Recover the summation tree a reduction of K terms really uses, by masking.

Technique: for every pair i < j, reduce K terms that are all u ("ones") except term i = +M and
term j = -M, with M so much larger than u that M plus any partial sum of ones rounds back to M.
Every one that joins i's or j's partial sum before those two meet is absorbed; +M and -M then
cancel exactly; every one added afterwards survives. So

    result / u = K - |leaves of the subtree where i and j first meet|

and the sizes of those meeting subtrees for all pairs determine the tree. The tree is rebuilt
bottom-up: at each size s (ascending) the groups that meet at size s are joined into one node.
A node joining more than two groups is a multi-term (fused) addition of single terms. The
rebuilt tree is then checked against every measurement; a reduction whose order changed between
the K(K-1)/2 calls (atomic adds, say) fails that check and is reported as inconsistent.

Assumptions: the reduction is a tree of additions, each exact or correctly rounded to the
assumed accumulation format (a wider internal accumulator than assumed can defeat the
absorption; the check then reports inconsistency rather than a wrong tree). A fused addition
whose operands include subtrees is measured as |C_i| + |C_j| (see `expected_sizes`); such
trees are not always identifiable from these measurements (fused{a, b, (x+y)} and
fused{(a+b), x, y} measure alike), and the rebuild may then report inconsistency.

A reducer is a function (a, b) -> float of two float64 vectors of length K whose terms are the
products a_i * b_i (every planted value is a power of two, split between the two factors so
that each is representable in the operand format and their product is exact).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import kernels

# significand bits (with the implicit bit) and normal exponent range of each format
FORMATS = {
    "fp64": (53, -1022, 1023),
    "fp32": (24, -126, 127),
    "tf32": (11, -126, 127),
    "bf16": (8, -126, 127),
    "fp16": (11, -14, 15),
}


def _check_format(name: str, value: str) -> None:
    if value not in FORMATS:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, FORMATS))}")


@dataclass(frozen=True)
class Planting:
    """The exponents of the planted values: M = 2**m_exp, u = 2**u_exp, split across the two factors."""

    k: int
    m_exp: int
    u_exp: int

    @staticmethod
    def split(exponent: int) -> tuple[float, float]:
        high = -(-exponent // 2)
        return 2.0 ** high, 2.0 ** (exponent - high)

    def vectors(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """a, b (float64) with a*b = u everywhere except +M at i and -M at j."""
        a = np.full(self.k, self.split(self.u_exp)[0])
        b = np.full(self.k, self.split(self.u_exp)[1])
        a[i], b[i] = self.split(self.m_exp)
        a[j], b[j] = -a[i], b[i]
        return a, b


def planting(k: int, operand: str = "fp32", accumulate: str = "fp32", products: bool = True) -> Planting:
    """Choose M and u so that M absorbs any partial sum of up to K ones in `accumulate`.

    M + s rounds to M and -M + s to -M when s < M * 2**-(p+1) (p = significand bits, the
    binade below M being the tighter one), i.e. log2(M/u) >= p + 1 + ceil(log2 K); one more bit
    of margin is kept. u = 1 when M fits, else both are scaled down. `products` says the terms
    are formed as a product of two operands (a dot), so each factor only needs half the range.
    """
    _check_format("operand", operand)
    _check_format("accumulate", accumulate)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k={k!r} is not allowed; the reveal needs an int k >= 2")
    p, acc_min, acc_max = FORMATS[accumulate]
    _, op_min, op_max = FORMATS[operand]
    factor = 2 if products else 1
    term_min, term_max = max(factor * op_min, acc_min), min(factor * op_max, acc_max)
    gap = p + 2 + math.ceil(math.log2(k))
    m_exp = min(gap, term_max)
    u_exp = m_exp - gap
    if u_exp < term_min or k > 2 ** (p - 1):
        raise ValueError(
            f"k={k} is too long to reveal with operand={operand!r} and accumulate={accumulate!r}: "
            f"M/u must be 2**{gap} inside the format's range and K ones must sum exactly"
        )
    return Planting(k, m_exp, u_exp)


@dataclass(frozen=True)
class Node:
    """A subtree: its leaves (sorted term indices) and its children (none for a single term)."""

    leaves: tuple[int, ...]
    children: tuple["Node", ...] = ()

    @staticmethod
    def join(children) -> "Node":
        """A node over `children`, in canonical order: larger subtrees first, then by first leaf."""
        ordered = tuple(sorted(children, key=lambda c: (-len(c.leaves), c.leaves[0])))
        return Node(tuple(sorted(leaf for child in ordered for leaf in child.leaves)), ordered)

    def __str__(self) -> str:
        return compact(self)


def chain_operands(node: Node) -> list[Node]:
    """A left-deep run of binary additions ((A + b) + c) + d as the operand list [A, b, c, d].

    The run follows the larger child only, so a balanced addition of two equal subtrees stays
    one visible group: ((0+1)+(2+3)) rather than (0+1+(2+3)).
    """
    if len(node.children) != 2:
        return [node]
    first, second = node.children
    if len(first.leaves) > len(second.leaves):
        return chain_operands(first) + [second]
    return [first, second]


def _subchain(operands: list[Node]) -> Node:
    """The left-deep node adding `operands` left to right."""
    node = operands[0]
    for operand in operands[1:]:
        node = Node(tuple(sorted(node.leaves + operand.leaves)), (node, operand))
    return node


def _is_leaf(node: Node) -> bool:
    return not node.children


def compact(node: Node) -> str:
    """Nested parentheses, runs of >= 3 consecutive single terms written lo..hi.

    "(a+b+c)" is the left-to-right sum ((a+b)+c); "{a+b+c}" is one fused multi-term addition;
    so a sequential sum of 0..7 is "(0..7)" and a pairwise tree of four is "((0+1)+(2+3))".
    """
    if _is_leaf(node):
        return str(node.leaves[0])
    if len(node.children) > 2:
        return "{" + "+".join(compact(child) for child in node.children) + "}"
    operands = chain_operands(node)
    leading = next((n for n, operand in enumerate(operands) if not _is_leaf(operand)), len(operands))
    if 2 <= leading < len(operands):
        # a run of single terms followed by subtrees: show the run as its own group
        operands = [_subchain(operands[:leading])] + operands[leading:]
    parts: list[str] = []
    run: list[int] = []

    def flush():
        if len(run) >= 3:
            parts.append(f"{run[0]}..{run[-1]}")
        else:
            parts.extend(str(leaf) for leaf in run)
        run.clear()

    for operand in operands:
        if _is_leaf(operand) and run and operand.leaves[0] == run[-1] + 1:
            run.append(operand.leaves[0])
            continue
        flush()
        if _is_leaf(operand):
            run.append(operand.leaves[0])
        else:
            parts.append(compact(operand))
    flush()
    return "(" + "+".join(parts) + ")"


def expected_sizes(tree: Node, k: int) -> np.ndarray:
    """(k, k) matrix of what the masking measures for `tree` (0 on the diagonal).

    For i and j that first meet in node P, inside its children C_i and C_j, the ones of C_i
    and C_j are absorbed and every other one survives: the measured size is |C_i| + |C_j|,
    which for a binary addition is |P|.
    """
    sizes = np.zeros((k, k), dtype=np.int64)

    def visit(node: Node):
        for index, child in enumerate(node.children):
            visit(child)
            for other in node.children[index + 1:]:
                rows, cols = np.array(child.leaves), np.array(other.leaves)
                sizes[np.ix_(rows, cols)] = len(child.leaves) + len(other.leaves)
                sizes[np.ix_(cols, rows)] = len(child.leaves) + len(other.leaves)

    visit(tree)
    return sizes


def tree_from_sizes(sizes: np.ndarray) -> Node:
    """Rebuild the tree from the meeting sizes of all pairs (see the module docstring)."""
    k = sizes.shape[0]
    group = list(range(k))  # group id of every leaf
    nodes = {leaf: Node((leaf,)) for leaf in range(k)}
    upper = np.triu_indices(k, 1)
    for size in np.unique(sizes[upper]):
        if size < 2:  # an unreadable measurement; the consistency check reports it
            continue
        parent: dict[int, int] = {}

        def root(g):
            while parent.get(g, g) != g:
                g = parent[g]
            return g

        for i, j in zip(*np.nonzero(np.triu(sizes == size, 1))):
            a, b = root(group[i]), root(group[j])
            if a != b:
                parent[max(a, b)] = min(a, b)
        members: dict[int, list[int]] = {}
        for g in {group[leaf] for leaf in range(k)}:
            members.setdefault(root(g), []).append(g)
        for new_id, joined in members.items():
            if len(joined) > 1:
                nodes[new_id] = Node.join(nodes.pop(g) for g in joined)
                group = [new_id if g in joined else g for g in group]
    if len(nodes) > 1:
        return Node.join(nodes.values())
    return next(iter(nodes.values()))


@dataclass
class Reveal:
    """The recovered tree of one reduction, and whether it explains every measurement."""

    k: int
    tree: Node
    consistent: bool
    sizes: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"k": self.k, "tree": compact(self.tree), "consistent": self.consistent}


def measure_sizes(reduce, plant: Planting) -> np.ndarray:
    """Meeting size of every pair, from K(K-1)/2 reductions; -1 where a result is not a whole count."""
    k = plant.k
    unit = 2.0 ** plant.u_exp
    sizes = np.zeros((k, k), dtype=np.int64)
    for i in range(k):
        for j in range(i + 1, k):
            survivors = float(reduce(*plant.vectors(i, j))) / unit
            whole = math.isfinite(survivors) and survivors == round(survivors) and 0 <= survivors <= k - 2
            sizes[i, j] = sizes[j, i] = k - int(survivors) if whole else -1
    return sizes


def reveal(reduce, k: int, operand: str = "fp32", accumulate: str = "fp32", products: bool = True) -> Reveal:
    """The summation tree of `reduce` (a reducer, see the module docstring) for length k."""
    plant = planting(k, operand, accumulate, products)
    sizes = measure_sizes(reduce, plant)
    tree = tree_from_sizes(sizes)
    return Reveal(k, tree, bool(np.array_equal(expected_sizes(tree, k), sizes)), sizes)


def kernel_reducer(reduction, backend: str = "auto", device="cpu", call: int = 0):
    """A (1, K) @ (K, 1) kernels.matmul under `reduction`, every call replaying call number `call`.

    Replaying one call number makes a splitk reduction use the same order in all K(K-1)/2
    measurements, so the reveal shows the order of that (seed, call).
    """
    def reduce(a, b):
        a_t = torch.from_numpy(a).float().to(device)[None, :]
        b_t = torch.from_numpy(b).float().to(device)[:, None]
        with kernels.counting(kernels.CallCounter(call)):
            return kernels.matmul(a_t, b_t, reduction, backend=backend)[0, 0].item()

    return reduce


def torch_matmul_reducer(dtype=torch.float32, device="cpu"):
    """torch.matmul of a (1, K) and a (K, 1) tensor of `dtype` (cuBLAS on CUDA, CPU BLAS otherwise)."""

    def reduce(a, b):
        a_t = torch.from_numpy(a).to(device=device, dtype=dtype)[None, :]
        b_t = torch.from_numpy(b).to(device=device, dtype=dtype)[:, None]
        return torch.matmul(a_t, b_t)[0, 0].item()

    return reduce


def torch_sum_reducer(dtype=torch.float32, device="cpu"):
    """torch.sum of the K terms, formed exactly and stored in `dtype` (use products=False)."""

    def reduce(a, b):
        return torch.from_numpy(a * b).to(device=device, dtype=dtype).sum().item()

    return reduce


TARGETS = ("kernels", "torch-matmul", "torch-sum")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def reveal_runs(target: str, k: int, calls, repeats: int, reduction, backend: str = "auto", dtype: str = "fp32",
                assume_accumulate: str | None = None, device="cpu") -> list[dict]:
    """Reveal the tree of `target` `repeats` times per call number; a row per reveal.

    target "kernels" is kernels.matmul under `reduction` (each reveal replays its call number);
    "torch-matmul" and "torch-sum" are torch's own, on `dtype` operands. Each row says whether
    its tree is the one the first reveal of its call number found.
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not allowed; choose one of {', '.join(TARGETS)}")
    rows = []
    for call in calls:
        for run in range(repeats):
            if target == "kernels":
                reducer = kernel_reducer(reduction, backend, device, call)
                operand, accumulate, products = reduction.precision, reduction.accumulate, True
            elif target == "torch-matmul":
                reducer = torch_matmul_reducer(TORCH_DTYPES[dtype], device)
                operand, accumulate, products = dtype, "fp32", True
            else:
                reducer = torch_sum_reducer(TORCH_DTYPES[dtype], device)
                operand, accumulate, products = dtype, "fp32", False
            start = time.perf_counter()
            result = reveal(reducer, k, operand, assume_accumulate or accumulate, products)
            row = {"call": call, "run": run, "seconds": round(time.perf_counter() - start, 3), **result.to_dict()}
            same_call = [r for r in rows if r["call"] == call]
            row["same_as_first_run"] = same_call[0]["tree"] == row["tree"] if same_call else True
            rows.append(row)
    return rows
