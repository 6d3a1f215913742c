# DeskPilot: multi-stage build, CPU-only torch, the embedding model package baked in, runs as a non-root user.
# In production set DESKPILOT_DATABASE_URL to a PostgreSQL >= 14 with pgvector >= 0.5.
# DESKPILOT_ADMIN_TOKEN and DESKPILOT_WEBHOOK_SECRET are required: `serve` on 0.0.0.0 refuses to start without
# either (the admin API would be open; anyone could post tickets as any customer).
#   docker run -e DESKPILOT_ADMIN_TOKEN=... -e DESKPILOT_WEBHOOK_SECRET=whsec_... -p 8000:8000 deskpilot

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU build of torch first, pinned, so nothing later pulls a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY tickets ./tickets
COPY ingest ./ingest
COPY knowledge ./knowledge
COPY agent ./agent
COPY delivery ./delivery
COPY review ./review
COPY app ./app
RUN pip install .

FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    DESKPILOT_DATA_DIR=/var/lib/deskpilot \
    DESKPILOT_MIGRATIONS_DIR=/app/migrations
RUN useradd --system --create-home --home-dir /app --uid 10001 deskpilot \
    && mkdir -p /var/lib/deskpilot && chown deskpilot /var/lib/deskpilot
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=deskpilot migrations ./migrations
COPY --chown=deskpilot examples ./examples
USER deskpilot
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
# `serve` applies pending migrations before it starts the API and the in-process worker.
ENTRYPOINT ["deskpilot"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
