#!/usr/bin/env bash
# The GPU machine's Triton (3.6.0) beside the installed one, in a `pip install --target`
# directory with a numpy that Triton 3.6's interpreter supports (< 2.4):
#   1. every kernel variant of the AOT registry compiles for sm_80 and sm_90 without spilling,
#   2. so does every variant tools/gpucheck.py launches, for the GPU machine's sm_90,
#   3. the interpreter tests pass.
# The directory is kept between runs (TRITON36_DIR, default $TMPDIR/symbreak-triton36).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${TRITON36_DIR:-${TMPDIR:-/tmp}/symbreak-triton36}"
if ! PYTHONPATH="$dir" python -c "import triton, numpy; assert triton.__version__ == '3.6.0'" 2>/dev/null; then
    python -m pip install --quiet --disable-pip-version-check --target "$dir" "triton==3.6.0" "numpy<2.4"
fi
export TRITON36_DIR="$dir"
echo "triton 3.6 environment: $dir"
PYTHONPATH="$dir" python -m pytest -q -p no:cacheprovider -m "slow or not slow" \
    tests/test_aot_compile.py::test_every_variant_compiles_for_sm80_and_sm90 \
    "tests/test_gpucheck.py::test_every_variant_the_check_launches_compiles_without_spills[triton-3.6]"
parallel=$(python -c "import importlib.util as u; print('-n 2' if u.find_spec('xdist') else '')")
PYTHONPATH="$dir" python -m pytest -q -p no:cacheprovider $parallel -m interpreter \
    tests/test_triton_gemm.py tests/test_triton_conv.py
