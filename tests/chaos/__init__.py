"""Fault and bad-input suite: the whole pipeline under load while processes are killed,
the broker restarted and databases cut off, then an oracle that counts lost and
double-applied changes and checks parity; and fuzzing of the facade and the legacy shop.

Bounded mode: ``python -m pytest -m chaos``. Long mode: ``make chaos``
(``python -m tests.chaos --long``). See docs/reliability.md.
"""
