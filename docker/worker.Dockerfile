# Training worker image: CUDA PyTorch from the official image, then the project with the worker extra.
# Build from the repository root: docker build -f docker/worker.Dockerfile .
# Add the offline BERTScore encoder with --build-arg EXTRAS=worker,offline-eval.
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
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
 && python -c "import torch, peft, transformers; assert torch.version.cuda, 'torch without CUDA'" \
 && useradd --create-home --uid 10001 ftaas \
 && mkdir -p /var/lib/ftaas /var/cache/huggingface \
 && chown ftaas:ftaas /var/lib/ftaas /var/cache/huggingface

# Same uid as the API image: both write the shared artifacts volume.
USER ftaas
CMD ["ftaas", "worker", "--gpu", "0"]
