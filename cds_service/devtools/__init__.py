"""Developer tooling: fixture scenarios, the local FHIR server, and the ``nms-cds`` developer commands
(``call``, ``demo``, ``dev``, ``fixtures``...). Production code (``create_app`` and everything it imports,
``nms-cds serve``) never imports this package; ``tests/test_devtools_boundary.py`` checks that."""
