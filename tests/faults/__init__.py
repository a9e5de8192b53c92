"""Faults under the running service: kills, cancels, broker and database outages (slow)."""
