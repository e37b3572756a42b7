"""How ``nms-cds serve`` runs: gunicorn workers (:mod:`.gunicorn`) behind a buffering nginx front
(:mod:`.front`), JSON-only output (:mod:`.output`), checks before binding (:mod:`.preflight`), the container
health check (:mod:`.healthcheck`). The design and its measured figures are in docs/reliability.md ("Serving");
the per-request watchdog and collector pause are in :mod:`cds_service.watchdog`.

- **Front** (``NMS_CDS_FRONT=nginx``, the default): gunicorn's sync and gthread workers read a request in
  the worker (a thread per connection), so a client that trickles its headers holds that worker. nginx reads
  whole requests (headers within ``NMS_CDS_CLIENT_HEADER_TIMEOUT_SECONDS``, body pauses up to
  ``NMS_CDS_CLIENT_BODY_TIMEOUT_SECONDS``, bodies beyond 64 KiB spooled to a temporary file) in its event loop
  and passes only complete requests to gunicorn over a Unix socket; it also buffers the answers, so slow
  readers do not hold workers either. The gunicorn master starts nginx once its socket is bound
  (``when_ready``) and stops it on exit; nginx's own answers (400/408/413/502/504) are the documented JSON
  error bodies. ``none``: gunicorn listens on the port itself (only behind another buffering proxy).
- **Output**: the master sends its own stdout/stderr and those of the workers and of nginx through one pipe;
  a thread passes JSON lines on and turns anything else (nginx's error log, stray prints, tracebacks) into
  one JSON record per line (a traceback becomes one record naming the exception type, never its text).
"""
