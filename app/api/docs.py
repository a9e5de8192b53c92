"""The interactive documentation, served by ftaas itself: no request leaves the machine.

FastAPI's own /docs and /redoc pages load Swagger UI and ReDoc from a public CDN, so on a host without internet
(as GPU hosts in many companies are) they were blank. Here Swagger UI 5 comes from the `swagger-ui-bundle-v2`
package (Apache-2.0, swagger-ui-dist 5.31.0 inside; Swagger UI 4 cannot render OpenAPI 3.1, which FastAPI writes),
started by app/api/static/docs-init.js, and the page's Content-Security-Policy allows only this server's origin.
ReDoc is dropped: one interactive page is enough, and it would need a second bundle. `/` leads to /docs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"
INIT_JS = Path(__file__).parent / "static" / "docs-init.js"
# Swagger UI sets inline styles on its elements, hence 'unsafe-inline' for styles only; images may be data: URLs
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)
PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>ftaas API</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS}/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/docs")


@router.get("/docs", include_in_schema=False)
async def swagger_ui() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


@router.get("/docs/init.js", include_in_schema=False)
async def swagger_ui_init() -> FileResponse:
    return FileResponse(INIT_JS, media_type="text/javascript", headers={"Content-Security-Policy": CSP})


def install_docs(app: FastAPI) -> None:
    """The docs routes and Swagger UI's files, on an app made with docs_url=None and redoc_url=None."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
