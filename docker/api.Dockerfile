# API image: FastAPI server and the `ftaas migrate` one-off. No worker extra, so no torch.
# Build from the repository root: docker build -f docker/api.Dockerfile .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/ftaas
# Only what the package and `ftaas migrate` need (the build context also holds .venv, var/ ...).
# `ftaas migrate` finds the migrations as an installed package; alembic.ini is for the alembic CLI.
COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install -c constraints.txt . \
 && useradd --create-home --uid 10001 ftaas \
 && mkdir -p /var/lib/ftaas/data \
 && chown -R ftaas:ftaas /var/lib/ftaas

# A fixed uid: the API's data volume (docker-compose.yml) is made owned by it from the folder above.
USER ftaas
EXPOSE 8000
CMD ["ftaas", "serve", "--host", "0.0.0.0", "--port", "8000"]
