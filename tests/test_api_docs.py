"""`/docs` works offline: the page and every asset it loads come from our own server (a real
uvicorn), never a CDN; `/redoc` (whose logo always comes from ReDoc's CDN) is not served. The browser half (the operations list drawn in headless chromium
with every outside host unresolvable) is in tests/test_dashboard_browser.py."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from pipeline.core.config import Settings
from tests.api_server import serving

# Every src= / href= in a page, and every url(...) in a stylesheet.
SRC_HREF = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
# Absolute http(s) URLs anywhere in a page's own text (its inline script names the schema's URL).
ABSOLUTE = re.compile(r"""["'(](https?://[^"')\s]+)""", re.IGNORECASE)


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    settings = Settings(lake_root=root / "lake", results_root=root / "results")
    with serving(settings) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        yield base, client


def _outside(base: str, urls: list[str]) -> list[str]:
    """The URLs (made absolute against the server) whose host is not the server's."""
    ours = urlsplit(base).netloc
    return [u for u in urls if urlsplit(urljoin(base + "/", u)).netloc not in ("", ours)]


def test_docs_page_references_only_our_own_server(docs_server):
    base, client = docs_server
    page = "/docs"
    answer = client.get(page)
    assert answer.status_code == 200, answer.text
    html = answer.text
    referenced = SRC_HREF.findall(html)
    assert referenced, f"{page} references no script or stylesheet: {html[:300]}"
    assert _outside(base, referenced + ABSOLUTE.findall(html)) == [], html
    # Every asset it references is served, with the type a browser needs.
    for url in referenced:
        asset = client.get(urljoin(base + "/", url))
        assert asset.status_code == 200, f"{url}: {asset.status_code}"
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"] and len(asset.content) > 100_000
        elif url.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css")
    assert client.get("/openapi.json").json()["info"]["title"] == "cryptobt"


def test_redoc_is_not_served(docs_server):
    _, client = docs_server
    answer = client.get("/redoc")
    assert answer.status_code == 404 and answer.json() == {"error": "Not Found"}
