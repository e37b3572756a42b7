# Production image: slim Python, non-root, gunicorn via `nms-cds serve`, JWT auth on by default.
# Every Python package is installed from a lock with its sha256 (requirements.lock, requirements-build.lock);
# the wheel carries the fixture scenarios, so `nms-cds demo`, `dev` and `load-fixtures` work in the image.
# Run read-only with `--read-only --tmpfs /tmp` (gunicorn and Python need a writable temporary directory).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --require-hashes --no-deps -r requirements-build.lock
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE NOTICE ./
COPY cds_service ./cds_service
COPY fhir_fixtures ./fhir_fixtures
RUN pip wheel --no-deps --no-build-isolation -w /dist .

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# nginx: the buffering front `nms-cds serve` starts in front of gunicorn (slow clients; docs/reliability.md)
RUN apt-get update && apt-get install -y --no-install-recommends nginx && rm -rf /var/lib/apt/lists/*
COPY requirements.lock ./
RUN pip install --no-compile --require-hashes --no-deps -r requirements.lock
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-compile --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist && pip check \
    && useradd --system --uid 10001 --home-dir /app --no-create-home nmscds \
    && mkdir -p /var/lib/nms-cds && chown 10001 /var/lib/nms-cds
USER 10001
# NMS_CDS_PORT is the serving port and the HEALTHCHECK's; `docker run IMAGE --port 9090` works too (the
# healthcheck reads the port from the command line of process 1).
# The embedded SQLite store (card audit, feedback, replay cache) when NMS_CDS_DATABASE_URL is not set: a volume,
# so it stays writable with --read-only.
ENV NMS_CDS_ENVIRONMENT=production NMS_CDS_AUTH=jwt NMS_CDS_PORT=8080 HOME=/tmp NMS_CDS_DATA_DIR=/var/lib/nms-cds
VOLUME ["/var/lib/nms-cds"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["nms-cds", "healthcheck"]
ENTRYPOINT ["nms-cds", "serve", "--host", "0.0.0.0"]
CMD ["--workers", "2"]
