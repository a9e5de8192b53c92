"""The HTTP API in process (FastAPI's test client on the test Postgres), route by route."""
