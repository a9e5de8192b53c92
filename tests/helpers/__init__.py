"""Shared test helpers, imported by the tests of every folder: service processes, private servers, factories,
the training path's pieces, the child run, uploads, SSE and webhook receivers, and reference computations."""
