"""End to end against the real service: the API under uvicorn and Celery workers on Redis and Postgres (slow)."""
