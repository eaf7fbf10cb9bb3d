# syntax=docker/dockerfile:1
# Airflow 3.3.2 on Python 3.11 with tl_core installed WITHOUT torch. The api-server, scheduler, dag-processor,
# triggerer and the CPU Celery worker (queue "default") run this image; heavy tasks go to worker-gpu.Dockerfile.
# Build from the repository root (docker compose does this):
#   docker build -f docker/airflow.Dockerfile -t tl-retrain/airflow:latest .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow

# curl: health checks; tini: PID 1 that reaps children and forwards signals; libgomp1: onnxruntime/scikit-learn.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl tini libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Same uid as the GPU worker and the official Airflow image, so both can write the shared logs volume.
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/logs /opt/airflow/dags /opt/airflow/plugins /opt/airflow/configs \
    && chown -R airflow:0 /opt/airflow && chmod -R g+rwX /opt/airflow

WORKDIR /opt/tl-retrain
COPY constraints.txt pyproject.toml README.md ./
COPY docker/constraints-deploy.txt docker/requirements-airflow.txt docker/

# Airflow, its providers and tl_core's CPU-side libraries, pinned by the repository's constraints.txt.
RUN python -m pip install -c constraints.txt -c docker/constraints-deploy.txt -r docker/requirements-airflow.txt

# tl_core itself without its declared dependencies: this is what keeps torch out of the image.
COPY tl_core/ tl_core/
RUN python -m pip install --no-deps -c constraints.txt -c docker/constraints-deploy.txt . \
    && python -c "import tl_core.cli, tl_core.pipeline, tl_core.store, tl_core.gate" \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the Airflow image" >&2; exit 1; fi

USER airflow
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "version"]
