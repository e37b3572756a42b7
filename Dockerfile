# Production image: slim Python, non-root, gunicorn via `nms-cds serve`, JWT auth on by default.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# nginx: the buffering front `nms-cds serve` starts in front of gunicorn (slow clients; docs/reliability.md)
RUN apt-get update && apt-get install -y --no-install-recommends nginx && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
RUN pip install --no-compile . && useradd --system --uid 10001 --home-dir /app nmscds \
    && mkdir -p /var/lib/nms-cds && chown 10001 /var/lib/nms-cds
USER 10001
# The embedded SQLite store (card audit, feedback, replay cache) when NMS_CDS_DATABASE_URL is not set.
ENV NMS_CDS_ENVIRONMENT=production NMS_CDS_AUTH=jwt NMS_CDS_DATA_DIR=/var/lib/nms-cds
VOLUME ["/var/lib/nms-cds"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["nms-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--workers", "2"]
