# Training worker image: CUDA PyTorch from the official image, then the project with the worker extra.
# Build from the repository root: docker build -f docker/worker.Dockerfile .
# Add the offline BERTScore encoder with --build-arg EXTRAS=worker,gpu,offline-eval.
# PyTorch 2.11, as the benchmarks ran (bench/RESULTS-2026-11-23.md): it has torch.nn.attention.varlen, which the
# packed fast path needs and 2.9 lacks. They ran its CUDA 13.0 build; this is the CUDA 12.8 one, which older
# drivers than 13.0's (580+) run. --build-arg BASE_IMAGE=pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime for that.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG EXTRAS=worker,gpu
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/var/cache/huggingface

WORKDIR /opt/ftaas
COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
# Pin the image's CUDA torch as a constraint: if any dependency wanted another torch, pip fails here
# instead of silently replacing it with a CPU wheel from PyPI.
RUN echo "torch==$(python -c 'import torch; print(torch.__version__)')" > /tmp/torch-constraint.txt \
 && pip install -c /tmp/torch-constraint.txt -c constraints.txt ".[${EXTRAS}]" \
 && rm /tmp/torch-constraint.txt \
 && python -c "import torch, peft, transformers" \
 && useradd --create-home --uid 10001 ftaas \
 && mkdir -p /var/lib/ftaas/data /var/cache/ftaas /var/cache/huggingface \
 && chown -R ftaas:ftaas /var/lib/ftaas /var/cache/ftaas /var/cache/huggingface

# The build fails unless the GPU fast path is there: a CUDA torch with variable-length attention for packed rows,
# and Liger Kernel. Without them a worker still trains, only slower, and says so nowhere else.
RUN python -m worker.training.kernels.fast_path

# A fixed uid: the volumes (the worker's cache, the model cache) are made owned by it from the folders above.
USER ftaas
CMD ["ftaas", "worker", "--gpu", "0"]
