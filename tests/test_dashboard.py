"""The dashboard in headless Chromium, over a running service (real Redis, RTSP, face media).

The browser opens the link with ``?token=`` as an operator would; the page then reaches the API
and the live feed with the cookie that link sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stream.redis_server import EmbeddedRedis
from stream.rtsp_camera import RtspCamera
from tests.support.service import ServiceServer, long_face_video, service_settings

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu"]
TOKEN = "dashboard-token-91e2"
STREAMS = ("lobby", "studio")
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def module_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this module's own, so that the last test can take it down."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def running(
    module_redis: EmbeddedRedis, media_dir: Path, retinaface_weights: Path
) -> Iterator[ServiceServer]:
    with RtspCamera(long_face_video(media_dir)) as rtsp:
        settings = service_settings(
            module_redis.url,
            redis={"prefix": "dash:", "reconnect_base_s": 0.1, "reconnect_cap_s": 0.5},
            api={"token": TOKEN},
            streams=[{"id": stream, "url": rtsp.url} for stream in STREAMS],
        )
        with ServiceServer(settings) as server:
            yield server


@pytest.fixture(scope="module")
def browser_context(running: ServiceServer) -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"the dashboard tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context()
        errors: list[str] = []
        context.on("weberror", lambda error: errors.append(str(error.error)))
        yield context
        browser.close()
        assert not errors, f"script errors on the page: {errors}"


@pytest.fixture(scope="module")
def page(browser_context: Any, running: ServiceServer) -> Any:
    page = browser_context.new_page()
    page.goto(f"{running.url}/?token={TOKEN}")
    return page


@pytest.fixture()
def api(running: ServiceServer) -> Iterator[httpx.Client]:
    with running.client() as client:
        yield client


def cell(page: Any, stream: str, column: int) -> str:
    return str(page.text_content(f'#streams tr[data-stream="{stream}"] td:nth-child({column})'))


def test_page_lists_the_streams(page: Any, running: ServiceServer) -> None:
    assert page.url == f"{running.url}/"  # the token left the address bar for a cookie
    for stream in STREAMS:
        page.wait_for_selector(f'#streams tr[data-stream="{stream}"]', timeout=WAIT_MS)
    page.wait_for_function(
        """ids => ids.every(id => {
              const row = document.querySelector(`#streams tr[data-stream="${id}"]`);
              return row && row.children[1].textContent === "online";
           })""",
        arg=list(STREAMS),
        timeout=WAIT_MS,
    )
    assert page.text_content("#conn") == "live"
    assert "2 stream(s)" in str(page.text_content("#summary"))
    legend = str(page.text_content("#legend"))
    assert all(stream in legend for stream in STREAMS)


def test_the_table_follows_streams_added_and_removed(
    page: Any, api: httpx.Client, running: ServiceServer
) -> None:
    url = running.settings.streams[0].url
    assert api.post("/api/streams", json={"id": "popup", "url": url}).status_code == 201
    page.wait_for_selector('#streams tr[data-stream="popup"]', timeout=WAIT_MS)
    assert api.delete("/api/streams/popup").status_code == 204
    page.wait_for_selector('#streams tr[data-stream="popup"]', state="detached",
                           timeout=WAIT_MS)
    page.wait_for_function(
        "() => document.querySelector('#summary').textContent.startsWith('2 stream(s)')",
        timeout=WAIT_MS,
    )


def test_the_untrained_banner_shows(page: Any) -> None:
    page.wait_for_selector("#banner", state="visible", timeout=WAIT_MS)
    assert "UNTRAINED" in str(page.text_content("#banner"))


def test_live_values_change_while_streams_run(page: Any) -> None:
    stream = STREAMS[0]
    page.wait_for_function(
        f"""() => {{
              const row = document.querySelector('#streams tr[data-stream="{stream}"]');
              return row && /^\\d+$/.test(row.children[5].textContent);
           }}""",
        timeout=WAIT_MS,
    )
    seq = int(cell(page, stream, 6))
    page.wait_for_function(
        f"""seq => {{
              const row = document.querySelector('#streams tr[data-stream="{stream}"]');
              return row && Number(row.children[5].textContent) > seq;
           }}""",
        arg=seq,
        timeout=WAIT_MS,
    )
    assert int(cell(page, stream, 6)) > seq
    # The random scorer's p_stream of the astronaut's face: a probability, shown as one.
    page.wait_for_function(
        f"""() => /^0\\.\\d{{3}}$|^1\\.000$/.test(
              document.querySelector('#streams tr[data-stream="{stream}"] .p-stream')
                .textContent)""",
        timeout=WAIT_MS,
    )


def test_an_alert_appears_with_its_evidence(page: Any, api: httpx.Client) -> None:
    assert page.query_selector("#alerts li.alert-event") is None
    # Thresholds of zero: any face (the random scorer gives p in (0, 1)) raises an alert.
    changed = api.put("/api/thresholds", json={"enter": 0.0, "exit": 0.0, "min_duration_s": 0.0})
    assert changed.status_code == 200, changed.text
    version = changed.json()["version"]
    page.wait_for_function(
        """() => [...document.querySelectorAll('#alerts li.alert-event')].some(li => {
              const img = li.querySelector('img');
              return li.textContent.includes('alert.start') && img && img.complete
                && img.naturalWidth > 0;
           })""",
        timeout=WAIT_MS,
    )
    item = next(
        li for li in page.query_selector_all("#alerts li.alert-event")
        if "alert.start" in str(li.text_content())
    )
    text = str(item.text_content())
    assert any(f"alert.start — {stream}" in text for stream in STREAMS), text
    assert f"config v{version}" in text
    event_id = item.get_attribute("data-event-id")
    evidence = api.get(f"/api/evidence/{event_id}")
    assert evidence.status_code == 200 and evidence.content[:2] == b"\xff\xd8"
    size = item.eval_on_selector("img", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [224, 224]
    # Its heatmap comes beside it once computed (the page retries while it is missing).
    page.wait_for_function(
        """() => [...document.querySelectorAll('#alerts li.alert-event img.heatmap')].some(
              img => !img.hidden && img.complete && img.naturalWidth === 224)""",
        timeout=WAIT_MS,
    )
    # The stream's row turns to alert too.
    page.wait_for_selector("#streams td.state-alert", timeout=WAIT_MS)


def test_the_timeline_plots_on_the_browsers_clock(
    page: Any, browser_context: Any, running: ServiceServer
) -> None:
    """A viewer whose clock is ten minutes off still sees the live timeline."""
    skewed = browser_context.new_page()
    skewed.add_init_script("{ const now = Date.now; Date.now = () => now() + 600000; }")
    try:
        skewed.goto(f"{running.url}/")  # with the cookie that the first page's link set
        skewed.wait_for_function(
            "() => [...streams.values()].some(s => s.series.length >= 3)", timeout=WAIT_MS
        )
    finally:
        skewed.close()


def test_a_redis_outage_shows_and_passes(page: Any, module_redis: EmbeddedRedis) -> None:
    """Last: it restarts this module's redis-server."""
    module_redis.stop()
    try:
        page.wait_for_function(
            "() => document.querySelector('#conn').textContent.includes('unavailable')",
            timeout=WAIT_MS,
        )
        assert "Redis" in str(page.text_content("#conn"))
    finally:
        module_redis.start()
    page.wait_for_function(
        "() => document.querySelector('#conn').textContent === 'live'", timeout=WAIT_MS
    )
    stream = STREAMS[1]
    seq = int(cell(page, stream, 6))
    page.wait_for_function(
        f"""seq => Number(document.querySelector(
              '#streams tr[data-stream="{stream}"]').children[5].textContent) > seq""",
        arg=seq,
        timeout=WAIT_MS,
    )
