"""Fault and bad-input suite: the whole pipeline under load written through the facade
while the write group moves to the new system and back, processes are killed, the broker
restarted and databases cut off, then an oracle that counts lost and double-applied
changes and decisions, holds both databases to what the writers were told and checks
parity; and fuzzing of the facade and the legacy shop.

Bounded mode: ``python -m pytest -m chaos``. Long mode: ``make chaos``
(``python -m tests.chaos --long``). See docs/reliability.md.
"""
