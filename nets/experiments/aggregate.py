"""From run directories to the numbers of a results table: per-configuration mean and spread.

A run directory (written by tools/run.py) holds config.json, summary.json and symmetry.jsonl; a
results directory (written by tools/experiment.py) holds run directories and experiment.json,
the grid that says which table row (`group`) and plot position (`series`, `x`) each run has.
Runs found without such a manifest are grouped by their options, seeds aside, and labelled by
the options that differ between the groups. A run without summary.json has not finished: it is
counted as incomplete and left out of the statistics.

Two times to symmetry break are reported. run.py's own, "steps to break", is the first step at
which *every* conv layer has left symmetry (max C_f < 1 - 1e-6). The "onset" is the first
recorded step (symmetry.jsonl holds steps 0, 1, 2, 4, 8, ..., epoch ends and the last step) at
which *some* conv layer has clearly broken, C_f < 1 - 1e-3: in a zero-initialised ConstNet the
layers next to the classifier break first and the stem last, often much later.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..files import read_json_object
from ..training.rundir import CONFIG, SUMMARY, SYMMETRY
from ..training.report import format_correlation
from ..training.symmetry import summarised_forward

MANIFEST = "experiment.json"
RESULTS = "results.json"
TABLE = "results.md"
ONSET_BELOW = 1.0 - 1e-3
# Options that differ between the seeds of one configuration, or that do not change its result.
PER_RUN_OPTIONS = ("seed", "noise_seed", "data_dir", "device", "log_every", "eval_batch_size")


@dataclass(frozen=True)
class Metric:
    """A column of the results table: a number per run, summarised over a group's runs."""

    key: str
    header: str
    kind: str  # "percent", "steps", "correlation", "ratio", "seconds"


METRICS = (
    Metric("final_acc", "final test acc (%)", "percent"),
    Metric("best_acc", "best test acc (%)", "percent"),
    Metric("onset_step", "onset step", "steps"),
    Metric("break_step", "steps to break", "steps"),
    Metric("max_cf", "max C_f (end)", "correlation"),
    Metric("min_cf", "min C_f (end)", "correlation"),
    Metric("mean_dissim", "mean dissim. (end)", "ratio"),
    Metric("seconds", "time (s)", "seconds"),
)


@dataclass
class RunResult:
    """One run directory: its options, and its summary and last symmetry record when finished."""

    path: Path
    options: dict
    summary: dict | None
    symmetry: list[dict]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def metrics(self) -> dict:
        """The run's value of every METRICS key (None where it has none, e.g. symmetry never broke)."""
        summary = self.summary or {}
        last = self.symmetry[-1]["forward"] if self.symmetry else []
        accuracy = summary.get("final_test_acc")
        best = summary.get("best_test_acc")
        return {
            "final_acc": None if accuracy is None else 100 * accuracy,
            "best_acc": None if best is None else 100 * best,
            "break_step": summary.get("symmetry_broke_step"),
            "max_cf": summary.get("final_max_forward"),
            "onset_step": next((record["step"] for record in self.symmetry if min(record["forward"]) < ONSET_BELOW),
                               None),
            "min_cf": min(last, default=None),
            "mean_dissim": summary.get("final_mean_dissimilarity"),
            "seconds": summary.get("total_seconds"),
        }




def _forward_correlations(path: Path) -> list[dict]:
    """Step and forward C_f of the summarised layers of every symmetry.jsonl record."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not valid JSON ({error})") from None
        records.append({"step": record["step"], "forward": list(summarised_forward(record).values())})
    return records


def load_run(path: str | Path) -> RunResult:
    """The run in directory `path` (ValueError when it holds no config.json)."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise ValueError(f"{path} is not a run directory: it has no {CONFIG}")
    config = read_json_object(path / CONFIG)
    summary = read_json_object(path / SUMMARY) if (path / SUMMARY).is_file() else None
    return RunResult(path, config.get("options", config), summary, _forward_correlations(path / SYMMETRY))


def collect(paths) -> tuple[list[RunResult], list[tuple[Path, dict]]]:
    """The runs under `paths` and the manifests found there.

    Each path is a run directory, or a results directory whose immediate subdirectories are
    runs (its experiment.json, if any, is returned with the directory it describes).
    """
    runs, manifests = [], []
    for path in map(Path, paths):
        if (path / CONFIG).is_file():
            runs.append(load_run(path))
            continue
        if not path.is_dir():
            raise ValueError(f"{path} is neither a run directory nor a results directory")
        if (path / MANIFEST).is_file():
            manifests.append((path, read_json_object(path / MANIFEST)))
        found = sorted(child for child in path.iterdir() if (child / CONFIG).is_file())
        if not found and not (path / MANIFEST).is_file():
            raise ValueError(f"{path} holds no run directories (none of its subdirectories has {CONFIG})")
        runs.extend(load_run(child) for child in found)
    return runs, manifests


@dataclass
class Group:
    """The runs of one configuration (one table row)."""

    label: str
    series: str
    x: float | str
    runs: list[RunResult] = field(default_factory=list)
    expected: int = 0
    also: list = field(default_factory=list)

    @property
    def finished(self) -> list[RunResult]:
        return [run for run in self.runs if run.finished]


def _config_key(options: dict) -> tuple:
    return tuple(sorted((key, json.dumps(value)) for key, value in options.items() if key not in PER_RUN_OPTIONS))


def _groups_by_options(runs: list[RunResult]) -> list[Group]:
    """Runs without a manifest: one group per option set, labelled by the options that vary."""
    keyed: dict[tuple, list[RunResult]] = {}
    for run in runs:
        keyed.setdefault(_config_key(run.options), []).append(run)
    varying = sorted({key for config in keyed for key, _ in config
                      if len({dict(other).get(key) for other in keyed}) > 1})
    groups = []
    for config, members in keyed.items():
        values = dict(config)
        shown = varying or ["net", "init", "reduction"]
        label = ", ".join(f"{key}={json.loads(values[key])}" for key in shown if key in values)
        groups.append(Group(label, "runs", label, members, len(members)))
    return groups


def group_runs(runs: list[RunResult], manifests: list[tuple[Path, dict]]) -> list[Group]:
    """Runs grouped into table rows: manifest rows first (in grid order), then the rest by options."""
    by_path = {run.path.resolve(): run for run in runs}
    groups: dict[str, Group] = {}
    placed = set()
    for folder, manifest in manifests:
        for spec in manifest["runs"]:
            group = groups.setdefault(spec["group"], Group(spec["group"], spec["series"], spec["x"],
                                                           also=spec.get("also", [])))
            group.expected += 1
            run = by_path.get((folder / spec["name"]).resolve())
            if run is not None:
                group.runs.append(run)
                placed.add(run.path.resolve())
    rest = [run for run in runs if run.path.resolve() not in placed]
    return list(groups.values()) + (_groups_by_options(rest) if rest else [])


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for a single value) and the values themselves."""
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def summarize_group(group: Group) -> dict:
    """A group's row of results.json: counts, and the spread of every metric over finished runs."""
    finished = group.finished
    per_run = [run.metrics() for run in finished]
    metrics = {
        metric.key: spread([values[metric.key] for values in per_run if values[metric.key] is not None])
        for metric in METRICS
    }
    return {
        "label": group.label,
        "series": group.series,
        "x": group.x,
        "also": group.also,
        "runs": [run.name for run in group.runs],
        "finished": len(finished),
        "expected": max(group.expected, len(group.runs)),
        "broke": sum(values["break_step"] is not None for values in per_run),
        "symmetric_at_end": sum(values["max_cf"] == 1.0 for values in per_run),
        "metrics": metrics,
    }


def summarize(groups: list[Group], manifests: list[tuple[Path, dict]] = ()) -> dict:
    """The content of results.json."""
    described = [{key: value for key, value in manifest.items() if key != "runs"} for _, manifest in manifests]
    return {"experiments": described, "groups": [summarize_group(group) for group in groups]}


def format_cell(metric: Metric, stats: dict) -> str:
    """mean ± std in the metric's units ('-' where no run has a value)."""
    mean, std = stats["mean"], stats["std"]
    if mean is None:
        return "-"
    if metric.kind == "correlation":
        return format_correlation(mean)
    digits = {"percent": 2, "steps": 0, "ratio": 4, "seconds": 0}[metric.kind]
    text = f"{mean:.{digits}f}"
    return text if stats["n"] < 2 else f"{text} ± {std:.{digits}f}"


def markdown_table(results: dict) -> str:
    """One row per group: runs finished, every metric as mean ± std, and how many runs broke in every layer."""
    header = ["configuration", "runs"] + [metric.header for metric in METRICS[:4]] + ["all broke"] + \
        [metric.header for metric in METRICS[4:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["groups"]:
        runs = f"{row['finished']}" if row["finished"] == row["expected"] else f"{row['finished']} of {row['expected']}"
        cells = [format_cell(metric, row["metrics"][metric.key]) for metric in METRICS]
        broke = f"{row['broke']}/{row['finished']}" if row["finished"] else "-"
        lines.append("| " + " | ".join([row["label"], runs] + cells[:4] + [broke] + cells[4:]) + " |")
    return "\n".join(lines) + "\n"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
