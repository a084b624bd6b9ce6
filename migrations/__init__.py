"""Alembic environment and revisions of the new database (the new domain's tables and the
facade's).

Run through ``new_domain.upgrade_database(url)`` or ``strangler db upgrade``; the
script location is this package's directory, which ``new_domain`` finds by the package's
name (it does not import it), so it works installed.
"""
