"""ftaas training worker: the Celery app, its task, and the training child (where torch and CUDA live)."""
