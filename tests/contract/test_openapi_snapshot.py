"""What a user sees of the API does not change by accident: the OpenAPI document's paths, methods, operation
ids, parameters, request bodies, responses and schemas are compared with a stored copy (descriptions and
summaries left out: wording may change). After a deliberate change of the API, regenerate the copy with
`FTAAS_UPDATE_OPENAPI_SNAPSHOT=1 scripts/test.sh tests/contract/test_openapi_snapshot.py` and commit it."""

from __future__ import annotations

import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "openapi.json"
WORDING = frozenset({"description", "summary"})


def without_wording(node):
    if isinstance(node, dict):
        return {k: without_wording(v) for k, v in node.items() if k not in WORDING}
    if isinstance(node, list):
        return [without_wording(v) for v in node]
    return node


def contract(doc: dict) -> dict:
    return without_wording({"paths": doc["paths"], "components": doc.get("components", {})})


def test_the_openapi_contract_is_unchanged():
    from app.main import app

    current = contract(app.openapi())
    if os.environ.get("FTAAS_UPDATE_OPENAPI_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    stored = json.loads(SNAPSHOT.read_text())
    assert sorted(current["paths"]) == sorted(stored["paths"]), "paths added or removed"
    for path, operations in stored["paths"].items():
        assert sorted(current["paths"][path]) == sorted(operations), f"methods of {path}"
        for method, operation in operations.items():
            assert current["paths"][path][method] == operation, f"{method.upper()} {path} changed"
    assert sorted(current["components"].get("schemas", {})) == sorted(stored["components"].get("schemas", {}))
    assert current == stored
