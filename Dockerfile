# One image for web, workers and scheduler. TORCH_VARIANT picks the PyTorch build:
# cpu (default; web, CPU worker, scheduler) or a CUDA build such as cu128 (GPU worker).
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    H3LAB_DATA_DIR=/data \
    H3LAB_VAR_DIR=/var/lib/h3lab \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app
RUN useradd --create-home --uid 1000 h3lab \
    && mkdir -p /data /var/lib/h3lab /app/staticfiles \
    && chown h3lab:h3lab /data /var/lib/h3lab /app/staticfiles

# torch first, from the index of the requested build, so requirements.txt cannot pull another.
COPY requirements.txt ./
RUN pip install torch==2.13.0 --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
    && pip install -r requirements.txt

COPY --chown=h3lab:h3lab . .
USER h3lab
EXPOSE 8000
# Every role passes `check --deploy` first; "web" then migrates and serves with
# `gunicorn --config gunicorn.conf.py` (scripts/entrypoint.sh).
ENTRYPOINT ["scripts/entrypoint.sh"]
CMD ["web"]
