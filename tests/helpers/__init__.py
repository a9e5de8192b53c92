"""Shared test helpers: service processes, private servers, factories and reference computations."""
