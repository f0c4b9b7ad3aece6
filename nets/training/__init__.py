"""Training runs with dialled reduction noise: configuration, loop, checkpoints, records and plots.

`tools/run.py` is the command line; `Training(build_config("quick", {...})).run(RunDir(path))`
does the same from Python.
"""
from .config import PRESETS, RunConfig, build_config
from .loop import RunOutcome, SetupError, Training
from .numerics import policy_from_config
from .rundir import RunDir, prepare_run_dir

__all__ = [
    "PRESETS",
    "RunConfig",
    "RunDir",
    "RunOutcome",
    "SetupError",
    "Training",
    "build_config",
    "policy_from_config",
    "prepare_run_dir",
]
