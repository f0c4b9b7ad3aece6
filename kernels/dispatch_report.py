"""What a policy mode controlled: every GEMM-like reduction it saw, by op and role.

Each reduction is counted once when it runs: "controlled" when the kernels ran it under the
policy, "native" when it fell through to torch (with the reason), so `share` says which part
of a model's matmul and convolution reductions the policy decided. Splits capped at a
reduction's length are counted by the splits they got.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class DispatchReport:
    """Counts by (op, role); `policy` is the description of the policy in force."""

    policy: str
    controlled: Counter = field(default_factory=Counter)
    native: Counter = field(default_factory=Counter)
    reasons: dict = field(default_factory=lambda: defaultdict(Counter))
    caps: dict = field(default_factory=lambda: defaultdict(Counter))

    def count(self, op: str, role: str, reason: str | None = None) -> None:
        """One reduction of `op` in `role`: controlled, or native because of `reason`."""
        if reason is None:
            self.controlled[op, role] += 1
        else:
            self.native[op, role] += 1
            self.reasons[op, role][reason] += 1

    def cap(self, op: str, role: str, splits: int) -> None:
        self.caps[op, role][splits] += 1

    @property
    def total(self) -> int:
        return sum(self.controlled.values()) + sum(self.native.values())

    @property
    def share(self) -> float:
        """Controlled reductions / all counted ones (1.0 when none were counted)."""
        return sum(self.controlled.values()) / self.total if self.total else 1.0

    def rows(self) -> list[dict]:
        """One row per (op, role): counts, why some fell through, and splits caps."""
        keys = sorted(set(self.controlled) | set(self.native))
        return [{
            "op": op, "role": role,
            "controlled": self.controlled[op, role], "native": self.native[op, role],
            "why_native": dict(self.reasons.get((op, role), {})),
            "capped_splits": {str(s): n for s, n in sorted(self.caps.get((op, role), {}).items())},
        } for op, role in keys]

    def to_dict(self) -> dict:
        return {"policy": self.policy, "share": self.share, "total": self.total, "rows": self.rows()}

    def table(self) -> str:
        """A text table of rows() and a closing line with the share."""
        rows = self.rows()
        width = max([24] + [len(row["op"]) for row in rows])
        roles = max([11] + [len(row["role"]) for row in rows])
        lines = [f"{'op':<{width}} {'role':<{roles}} {'controlled':>10} {'native':>7}  why native / capped splits"]
        for row in rows:
            notes = [f"{why} x{n}" for why, n in row["why_native"].items()]
            notes += [f"splits {s} x{n}" for s, n in row["capped_splits"].items()]
            lines.append(f"{row['op']:<{width}} {row['role']:<{roles}} {row['controlled']:>10} {row['native']:>7}  "
                         + "; ".join(notes))
        lines.append(f"policy ({self.policy}) controlled {sum(self.controlled.values())} of {self.total} "
                     f"reductions ({100 * self.share:.1f} %)")
        return "\n".join(lines)
