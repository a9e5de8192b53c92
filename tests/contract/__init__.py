"""The API's contract: its OpenAPI document, Schemathesis, the openai client, tenant isolation."""
