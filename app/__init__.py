"""ftaas HTTP API. Never imports torch: the training stack lives in worker/."""
