# session-metrics: consumes "session created" events from Kafka, serves /metrics on 8000.
# Configure it with SESSION_METRICS_* environment variables (docs/configuration.md).
# tests/test_deploy_image.py lints this file and replays the build stage's commands.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY schemas ./schemas
# Every dependency ships manylinux wheels, so nothing is compiled. pip and setuptools are
# dropped from the venv once they have done their job: the runtime image installs nothing.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric user so Kubernetes' runAsNonRoot can check it without a passwd entry.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["session-metrics", "run"]
