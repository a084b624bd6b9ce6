"""Benchmarks of the strangler kit, each measured against a baseline taken in the same run.

Run them all with ``make bench`` (``python -m bench``), at tiny sizes with ``make
bench-smoke``, or one at a time (``python -m bench pipeline_throughput --size 20000``).
Each prints a table (figure, baseline, ratio, target, met) and writes
``bench/results/<name>.json``. See ``docs/benchmarks.md`` for the latest figures.
"""
