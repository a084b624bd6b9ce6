"""The composition root: the ``strangler`` command and the one-process demo.

This is the one place that wires every package together (the legacy shop, the bridge,
the new domain, the broker and the facade). It imports each of them through its public
API (``__init__.py``); the facade's own modules (``skeleton_app/*.py``) import only
``new_domain``'s public API and nothing of the bridge, the example or the migrations.
"""
