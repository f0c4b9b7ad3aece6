"""What a run has done so far: its step, counters, the open logging interval and its history.

A RunState is saved whole in every checkpoint, so a resumed run restores its metrics and
symmetry history (and rewrites metrics.jsonl / symmetry.jsonl from it) and continues the open
logging interval exactly where the interrupted run left it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Interval:
    """Sums over the training steps since the last train record."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    steps: int = 0
    seconds: float = 0.0

    def add(self, loss: float, correct: int, count: int, seconds: float) -> None:
        self.loss_sum += loss * count
        self.correct += correct
        self.count += count
        self.steps += 1
        self.seconds += seconds


@dataclass
class RunState:
    """Progress and history of a run; everything here goes into the checkpoint."""

    step: int = 0
    images: int = 0
    train_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    best_test_acc: float | None = None
    best_test_step: int | None = None
    symmetry_broke_step: int | None = None
    layer_broke_steps: dict = field(default_factory=dict)
    max_forward: float | None = None
    interval: Interval = field(default_factory=Interval)
    metrics: list = field(default_factory=list)
    symmetry: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain values for the checkpoint, written at once: the histories' records are listed, not
        copied one by one, so a checkpoint does not cost more with every record the run adds."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        return {**values, "interval": asdict(self.interval), "layer_broke_steps": dict(self.layer_broke_steps),
                "metrics": list(self.metrics), "symmetry": list(self.symmetry)}

    @classmethod
    def from_dict(cls, values: dict) -> "RunState":
        return cls(**{**values, "interval": Interval(**values["interval"])})

    def latest_test(self) -> dict | None:
        tests = [record for record in self.metrics if record["kind"] == "test"]
        return tests[-1] if tests else None
