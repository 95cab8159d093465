"""Benchmarks and the thesis reproduction (runnable scripts plus their shared helpers).

Not part of the installed package: run them from the repository, e.g.
``python bench/reproduce.py --quick``.
"""
