"""Developer tooling: fixture scenarios, the local FHIR server, and the ``nms-cds`` developer commands
(``call``, ``demo``, ``dev``, ``fixtures``...). A leaf: production code (``create_app`` and everything it imports,
``nms-cds serve``) never imports this package; only the command line registers its commands. The import-linter
contracts in pyproject.toml (run by tests/core/test_import_contracts.py) check that."""
