"""The dashboard page and /docs, whose Swagger UI script and style are served from here
(fastapi-offline's copy): FastAPI's own page loads them from a CDN and is blank offline. No /redoc:
ReDoc fetches its logo from its CDN whatever the options."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from pipeline.api import page

# Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css, favicon.png) as fastapi-offline ships them.
DOCS_STATIC = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS = "/docs-assets"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def dashboard() -> HTMLResponse:
    return HTMLResponse(page.dashboard_html())


def mount_docs_assets(app: FastAPI) -> None:
    """Swagger UI's files under DOCS_ASSETS (a mount: a router cannot carry one)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=DOCS_STATIC), name="docs-assets")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    # No validator badge: Swagger UI would fetch it from validator.swagger.io.
    return get_swagger_ui_html(openapi_url=request.app.openapi_url or "/openapi.json", title="cryptobt - Swagger UI",
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})
