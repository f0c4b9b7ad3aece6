"""The command lines: thin click programs over kernels, probes and nets (nothing imports this package).

Each module runs as `python tools/NAME.py` from a checkout and as `symbreak NAME` once installed.
"""
