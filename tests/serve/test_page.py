"""The search page at ``/`` in a real browser: headless Chromium (Debian's ``chromium``)
loads ``/?q=QUERY``, the page's JavaScript calls ``/search`` and renders the hits; with an
API key, typed into the page (``#key=``) or missing. Skipped where Chromium is missing."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import CORPUS
from textcl import SentenceEncoder
from textcl.search import open_index, search
from textcl.serve import ServeConfig, create_app
from textcl.serve.server import ServerThread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)"),
]


def dump_dom(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (virtual time waits for its fetches)."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


def hits_in(dom: str) -> list[tuple[float, str]]:
    items = re.findall(
        r'<li class="hit"><span class="score">([^<]*)</span><span class="text">([^<]*)</span>', dom
    )
    return [(float(score), html.unescape(text)) for score, text in items]


def status_in(dom: str) -> str:
    found = re.search(r'<p id="status"[^>]*>([^<]*)</p>', dom)
    return html.unescape(found.group(1)) if found else ""


def test_page_renders_hits(serve_model_dir: Path, serve_index: Path, tmp_path: Path) -> None:
    query = "a dog in a field"
    want = search(serve_index, query, top_k=3)[0]
    enc = SentenceEncoder.from_pretrained(serve_model_dir)
    app = create_app(enc, index=open_index(serve_index), config=ServeConfig(api_key="page-key"))
    with ServerThread(app) as server:
        # the key typed in the page (here through the URL fragment, never sent to the server)
        dom = dump_dom(f"{server.url}/?q={quote(query)}&k=3#key=page-key", tmp_path / "p1")
        hits = hits_in(dom)
        assert [text for _, text in hits] == [h.text for h in want], status_in(dom)
        assert [s for s, _ in hits] == pytest.approx([h.score for h in want], abs=1e-4)
        assert "3 hits" in status_in(dom)
        # negative control: without the key the page shows the 401 and no hits
        dom = dump_dom(f"{server.url}/?q={quote(query)}", tmp_path / "p2")
        assert hits_in(dom) == [] and status_in(dom).startswith("error 401")


def test_page_without_api_key(serve_model_dir: Path, serve_index: Path, tmp_path: Path) -> None:
    enc = SentenceEncoder.from_pretrained(serve_model_dir)
    app = create_app(enc, index=open_index(serve_index), config=ServeConfig())
    with ServerThread(app) as server:
        dom = dump_dom(f"{server.url}/?q={quote(CORPUS[4])}", tmp_path / "p")
        hits = hits_in(dom)
        assert len(hits) == 10 and hits[0][1] == CORPUS[4]  # the sentence finds itself
        assert hits[0][0] == pytest.approx(1.0, abs=1e-4)
        assert "sentences" in dom  # /info rendered: "... N sentences"
