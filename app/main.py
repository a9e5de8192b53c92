"""The FastAPI application, assembled: each domain's router, the error handlers, the middleware, the OpenAPI
document and the background work of an API process. Nothing else lives here."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import health
from app.api.admission import AdmissionMiddleware
from app.api.background import background_lifespan
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.input_guard import NulGuardMiddleware
from app.api.openapi import build_openapi
from app.api.request_id import RequestIdMiddleware
from app.api.telemetry import install_metrics
from app.api.upload_limit import UploadLimitMiddleware
from app.comparisons import routes as comparisons
from app.core.settings import get_settings
from app.evaluation import chart_routes as charts
from app.evaluation import routes as leaderboard
from app.files import preview_routes as previews
from app.files import routes as files
from app.jobs import model_routes as models
from app.jobs import result_routes as results
from app.jobs import routes as jobs
from app.sweeps import routes as sweeps
from app.webhooks import routes as webhooks

DESCRIPTION = """
Fine-tuning as a service. Upload a dataset (`/v1/files`), start LoRA, QLoRA or prompt-tuning jobs
(`/v1/fine_tuning/jobs`), watch them, compare base and tuned models by ROUGE, BERTScore, perplexity and
token accuracy, pick the best per file, and download its adapter. Authorize with `Bearer <key>` from
`ftaas create-key --tenant NAME`. The shapes follow OpenAI's fine-tuning API, so its client works too.
"""


def create_app() -> FastAPI:
    settings = get_settings()
    # the lifespan runs the process's background work while it serves: webhooks, sweep decisions (app/api/background.py)
    # docs_url/redoc_url None: FastAPI's pages load from a CDN; ours are served from the package (app/api/docs.py)
    app = FastAPI(
        title="ftaas",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=background_lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.openapi = lambda: build_openapi(app)  # FastAPI's document plus the errors the app really answers
    routers = [
        m.router
        for m in (health, files, previews, leaderboard, jobs, results, sweeps, charts, comparisons, models, webhooks)
    ]
    install_error_handlers(app, routes=[route for router in routers for route in router.routes])
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(NulGuardMiddleware)
    # a request waits for its turn before anything else runs (app/api/admission.py)
    app.add_middleware(AdmissionMiddleware)
    # around everything, so that even a request refused for want of a turn answers (and logs) its X-Request-ID
    app.add_middleware(RequestIdMiddleware)
    for router in routers:
        app.include_router(router)
    install_docs(app)
    install_metrics(app)  # GET /metrics, Prometheus (app/api/telemetry.py)
    return app


app = create_app()
