"""The page and its static files over plain HTTP (no browser needed)."""

import httpx

from tests.conftest import EXAMPLE_IMAGE


def test_page_and_static_files_are_served(start_server):
    server = start_server()
    page = httpx.get(f"{server.http}/", timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert httpx.get(f"{server.http}/web/app.js", timeout=5).status_code == 200
    if EXAMPLE_IMAGE.is_file():
        assert httpx.get(f"{server.http}/example/image.png", timeout=5).content[:4] == b"\x89PNG"
    for bad in ("/web/../settings.py", "/web/missing.js", "/example/README.md", "/web/%2e%2e%2fsettings.py"):
        assert httpx.get(f"{server.http}{bad}", timeout=5).status_code == 404, bad
