#!/bin/sh
# Fail closed: a worker on the "gpu" queue that cannot see a GPU would silently train on the CPU.
# TL_REQUIRE_GPU=0 skips the check (e.g. `docker compose run --rm airflow-worker-gpu tl ...` on a CPU host).
set -eu
if [ "${TL_REQUIRE_GPU:-1}" = "1" ]; then
    python - <<'PY'
import sys

import onnxruntime
import torch

if not torch.cuda.is_available():
    sys.exit("gpu-entrypoint: torch sees no CUDA device (is the NVIDIA Container Toolkit installed and the "
             "service given a GPU reservation?); refusing to start a gpu-queue worker. Set TL_REQUIRE_GPU=0 to skip.")
providers = onnxruntime.get_available_providers()
sys.stderr.write(f"gpu-entrypoint: {torch.cuda.device_count()} CUDA device(s): {torch.cuda.get_device_name(0)}; "
                 f"onnxruntime providers {providers}\n")
PY
fi
exec "$@"
