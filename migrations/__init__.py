"""Alembic migrations (a package so that `ftaas migrate` finds them when installed)."""
