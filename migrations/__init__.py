"""Alembic environment and revisions of the new domain's database.

Run through ``new_domain.upgrade_database(url)`` or ``strangler db upgrade``; the
script location is this package's directory, so it works installed.
"""
