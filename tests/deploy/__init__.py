"""Deployment: docker-compose.yml and the install lock."""
