# Two images from one file, both from the hashed lock (requirements.txt):
#   --target web     the web server, without torch (the web process never imports it;
#                    tests/test_packaging.py checks that in a subprocess)
#   --target worker  Celery workers and the scheduler (beat loads the tasks, which import
#                    torch); TORCH_VARIANT picks the PyTorch build: cpu (default) or a CUDA
#                    build such as cu128 for the GPU worker. The default target.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    H3LAB_DATA_DIR=/data \
    H3LAB_VAR_DIR=/var/lib/h3lab \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app
# pg_dump/pg_restore for `manage.py backup`/`restore`: Debian's client (15 on bookworm, 17 on
# trixie). It must be at least the server's major version (compose: postgres:15); see
# docs/operations.md, Backup, for restoring with a newer client. Not built here yet.
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 h3lab \
    && mkdir -p /data /var/lib/h3lab /app/staticfiles \
    && chown h3lab:h3lab /data /var/lib/h3lab /app/staticfiles

# Hash-checking mode: pip installs only the files whose hashes the lock lists, and refuses any
# package the lock does not pin. The lock holds no torch.
COPY requirements.txt ./
RUN pip install --require-hashes -r requirements.txt && pip check


FROM base AS web
COPY --chown=h3lab:h3lab . .
USER h3lab
EXPOSE 8000
# Every role passes `check --deploy` first; "web" then migrates and serves with
# `gunicorn --config gunicorn.conf.py` (scripts/entrypoint.sh).
ENTRYPOINT ["scripts/entrypoint.sh"]
CMD ["web"]


FROM base AS worker
ARG TORCH_VARIANT=cpu
# torch, pinned in requirements-torch.txt, from the index of the requested build (the only
# install outside the hashed lock: its wheels differ per build). Its common dependencies are
# already there from the lock, so pip adds only what the build itself needs (CUDA libraries
# for a cu* build); `pip check` fails the build if anything is inconsistent.
COPY requirements-torch.txt ./
RUN pip install -r requirements-torch.txt \
        --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
    && pip check
COPY --chown=h3lab:h3lab . .
USER h3lab
ENTRYPOINT ["scripts/entrypoint.sh"]
CMD ["celery", "-A", "h3lab.celery", "worker", "--queues=cpu,default", "--pool=threads"]
