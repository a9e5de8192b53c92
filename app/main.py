"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from app.config import get_settings
from app.errors import install_error_handlers
from app.input_guard import NulGuardMiddleware
from app.openapi import build_openapi
from app.routes import charts, comparisons, files, health, jobs, leaderboard, models, results, sweeps, webhooks
from app.upload_limit import UploadLimitMiddleware
from app.webhook_dispatch import dispatcher_lifespan

DESCRIPTION = """
Fine-tuning as a service. Upload a dataset (`/v1/files`), start LoRA, QLoRA or prompt-tuning jobs
(`/v1/fine_tuning/jobs`), watch them, compare base and tuned models by ROUGE, BERTScore, perplexity and
token accuracy, pick the best per file, and download its adapter. Authorize with `Bearer <key>` from
`ftaas create-key --tenant NAME`. The shapes follow OpenAI's fine-tuning API, so its client works too.
"""


def create_app() -> FastAPI:
    settings = get_settings()
    # the lifespan runs the webhook dispatcher thread while the process serves (app/webhook_dispatch.py)
    app = FastAPI(title="ftaas", version="0.1.0", description=DESCRIPTION, lifespan=dispatcher_lifespan)
    app.openapi = lambda: build_openapi(app)  # FastAPI's document plus the errors the app really answers
    routers = [
        m.router for m in (health, files, leaderboard, jobs, results, sweeps, charts, comparisons, models, webhooks)
    ]
    install_error_handlers(app, routes=[route for router in routers for route in router.routes])
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(NulGuardMiddleware)
    for router in routers:
        app.include_router(router)
    return app


app = create_app()
