"""Hypothesis settings of the fuzz and crash suites (this module holds no tests).

By default every property runs a CI-sized number of examples, derandomized: the same examples on
every run, so a failure in CI reproduces. SYMBREAK_FUZZ_EXAMPLES=N runs N fresh random examples
per property (and N kill sequences in the crash suite), e.g. 2000 for a night's fuzzing.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("SYMBREAK_FUZZ_EXAMPLES", 0))


def fuzz(ci_examples: int) -> settings:
    """Settings for a property: `ci_examples` examples in CI, SYMBREAK_FUZZ_EXAMPLES when set."""
    return settings(max_examples=EXAMPLES or ci_examples, derandomize=not EXAMPLES, database=None,
                    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
