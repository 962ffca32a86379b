"""The dashboard in headless Chromium, over a running service (real Redis, RTSP, face media).

The browser opens the link with ``?token=`` as an operator would; the page then reaches the API
and the live feed with the cookie that link sets.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stream.redis_server import EmbeddedRedis
from stream.rtsp_camera import RtspCamera
from stream.samples import face_frames, write_video
from tests.support.service import ServiceServer, long_face_video, service_settings, wait_until

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
def blink(running: ServiceServer, media_dir: Path) -> Iterator[str]:
    """A third stream whose face leaves the picture for 5 s of every 9 (the other two always
    show one): longer than the rolling window and the hold, so p_stream goes null and alerts
    end. Added by the first test that asks for it."""
    path = media_dir / "face_blinking_9s.mp4"
    if not path.is_file():
        frames = [rgb for rgb, _ in face_frames(640, 480, 4 * 15)]
        frames += [rgb for rgb, _ in face_frames(640, 480, 5 * 15, face=False)]
        write_video(path, iter(frames), fps=15, gop=30)
    with RtspCamera(path) as rtsp, running.client() as api:
        added = api.post("/api/streams", json={"id": "blink", "url": rtsp.url})
        assert added.status_code == 201, added.text
        yield "blink"
        api.delete("/api/streams/blink")


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
    # The live feed is joined once the recent history is in.
    page.wait_for_function(
        "() => document.querySelector('#conn').textContent === 'live'", timeout=WAIT_MS
    )
    assert "2 stream(s)" in str(page.text_content("#summary"))
    legend = str(page.text_content("#legend"))
    assert all(stream in legend for stream in STREAMS)


def test_the_page_loads_with_no_console_errors(
    browser_context: Any, running: ServiceServer
) -> None:
    """No 404 for /favicon.ico (the page declares its icon) nor any other failed request."""
    fresh = browser_context.new_page()
    problems: list[str] = []
    fresh.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    fresh.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    fresh.on("response", lambda response: problems.append(f"{response.status}: {response.url}")
             if response.status >= 400 else None)
    try:
        fresh.goto(f"{running.url}/")  # with the cookie that the first page's link set
        fresh.wait_for_function(
            "() => [...streams.values()].some(s => s.last !== null && s.series.length >= 3)",
            timeout=WAIT_MS,
        )
        icon = fresh.eval_on_selector("link[rel=icon]", "link => link.href")
        assert icon.startswith("data:image/svg+xml,")
    finally:
        fresh.close()
    assert problems == []
    # The browser's own request for the icon (a JSON page has none declared) finds one too.
    with httpx.Client(base_url=running.url) as anonymous:
        favicon = anonymous.get("/favicon.ico")
    assert favicon.status_code == 200, favicon.text
    assert favicon.headers["content-type"].startswith("image/svg+xml")


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


def test_a_stream_that_cannot_connect_says_why(page: Any, api: httpx.Client) -> None:
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    added = api.post("/api/streams", json={"id": "nowhere", "url": f"rtsp://127.0.0.1:{port}/x"})
    assert added.status_code == 201, added.text
    try:
        row = '#streams tr[data-stream="nowhere"]'
        page.wait_for_function(
            f"""() => {{
                  const cell = document.querySelector('{row} td.reason');
                  return cell && cell.textContent !== "–";
               }}""",
            timeout=WAIT_MS,
        )
        reason = str(page.text_content(f"{row} td.reason"))
        assert "refused" in reason.lower(), reason
        assert reason in str(api.get("/api/streams/nowhere").json()["last_error"])
        # It never had a score: nothing made up in its place.
        assert str(page.text_content(f"{row} .p-stream")) == "–"
        assert str(page.text_content(f"{row} .faces")) == "–"
        assert cell(page, "nowhere", 3) == "–"
    finally:
        assert api.delete("/api/streams/nowhere").status_code == 204
    # The working streams have no problem to show.
    for stream in STREAMS:
        assert str(page.text_content(f'#streams tr[data-stream="{stream}"] td.reason')) == "–"


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
    # The random scorer's p_stream of the astronaut's face: a probability, shown as one, and the
    # faces in the frame beside it as a count (or "none").
    page.wait_for_function(
        f"""() => /^0\\.\\d{{3}}$|^1\\.000$/.test(
              document.querySelector('#streams tr[data-stream="{stream}"] .p-stream')
                .textContent)""",
        timeout=WAIT_MS,
    )
    assert cell(page, stream, 5) == "none" or int(cell(page, stream, 5)) >= 1


def test_no_face_is_a_gap_in_the_timeline_not_a_zero(page: Any, blink: str) -> None:
    """While the face is away p_stream is null: the line breaks there rather than diving to 0
    ("certainly real"), and the row says "no face"."""
    page.wait_for_function(
        """id => {
              const s = streams.get(id), drawn = timeline.streams[id];
              // A null after a score, drawn since: a real no-face period, not the first frame.
              const first = s ? s.series.findIndex(([, p]) => p !== null) : -1;
              return drawn && first >= 0 && s.series.slice(first).some(
                ([t, p]) => p === null && t < timeline.drawnAt - 0.5);
           }""",
        arg=blink,
        timeout=WAIT_MS,
    )
    checked = page.evaluate(
        """() => [...streams.entries()].map(([id, s]) => {
              const noFace = s.series.filter(([, p]) => p === null).map(([t]) => t);
              const drawn = timeline.streams[id].segments.flat();
              return {
                id,
                noFace: noFace.length,
                drawnAtNoFace: drawn.filter(([t]) => noFace.includes(t)).length,
                drawnNotNumbers: drawn.filter(([, p]) => typeof p !== "number").length,
              };
           })"""
    )
    for c in checked:
        assert c["drawnAtNoFace"] == 0 and c["drawnNotNumbers"] == 0, checked
    assert next(c for c in checked if c["id"] == blink)["noFace"] > 0, checked
    page.wait_for_function(
        f"""() => document.querySelector(
              '#streams tr[data-stream="{blink}"] .p-stream').textContent === "no face" """,
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
              const img = li.querySelector('img.evidence');
              return li.textContent.includes('ALERT') && img && img.complete
                && img.naturalWidth > 0;
           })""",
        timeout=WAIT_MS,
    )
    item = next(
        li for li in page.query_selector_all("#alerts li.alert-event")
        if "ALERT" in str(li.text_content()) and li.query_selector("img.evidence")
    )
    text = str(item.text_content())
    assert any(f"ALERT — {stream}" in text for stream in (*STREAMS, "blink")), text
    assert "ongoing" in text or "alert ended" in text, text
    assert f"config v{version}" in text
    event_id = item.get_attribute("data-event-id")
    evidence = api.get(f"/api/evidence/{event_id}")
    assert evidence.status_code == 200 and evidence.content[:2] == b"\xff\xd8"
    size = item.eval_on_selector("img.evidence", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [224, 224]
    # Its heatmap comes beside it once computed (the page retries while it is missing).
    page.wait_for_function(
        """() => [...document.querySelectorAll('#alerts li.alert-event img.heatmap')].some(
              img => !img.hidden && img.complete && img.naturalWidth === 224)""",
        timeout=WAIT_MS,
    )
    # The stream's row turns to alert too.
    page.wait_for_selector("#streams td.state-alert", timeout=WAIT_MS)


def alert_events(api: httpx.Client) -> dict[str, list[dict[str, Any]]]:
    """The stored alert events by event_id, oldest first."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in reversed(api.get("/api/events?count=1000").json()):
        if event["type"].startswith("alert."):
            by_id.setdefault(event["event_id"], []).append(event)
    return by_id


def test_one_card_per_alert_updated_in_place(page: Any, api: httpx.Client, blink: str) -> None:
    # Alerts that end while blink's face is away and start again when it is back.
    changed = api.put("/api/thresholds", json={"hold_s": 0.5, "cooldown_s": 0.0})
    assert changed.status_code == 200, changed.text

    def ended() -> list[str]:
        return [
            event_id for event_id, events in alert_events(api).items()
            if {"alert.start", "alert.end"} <= {e["type"] for e in events}
        ]

    assert wait_until(ended, timeout_s=WAIT_MS / 1000), alert_events(api)
    event_id = ended()[0]
    card = f'#alerts li.alert-event[data-event-id="{event_id}"]'
    page.wait_for_selector(f'{card}[data-state="ended"]', timeout=WAIT_MS)
    events = alert_events(api)[event_id]
    ids = page.eval_on_selector_all(
        "#alerts li.alert-event", "lis => lis.map(li => li.dataset.eventId)"
    )
    assert len(ids) == len(set(ids)), ids  # start, updates and end: one card
    text = str(page.text_content(card))
    end = events[-1]
    assert end["type"] == "alert.end"
    assert f"alert ended — {end['stream']}" in text
    assert f"peak {max(e['top_score'] for e in events):.3f}" in text
    tracks = sorted({t for e in events for t in e["tracks"]})
    assert "tracks " + ", ".join(map(str, tracks)) in text
    assert end["reason"] in text
    start_clock, end_clock = page.evaluate(
        "ts => ts.map(t => new Date(t * 1000).toLocaleTimeString())", [end["start"], end["end"]]
    )
    assert f"{start_clock} → {end_clock}" in text
    assert page.query_selector(f"{card} img.evidence") is not None


def test_the_timeline_shades_the_alerts(page: Any) -> None:
    page.wait_for_function(
        """() => Object.values(timeline.streams).some(d => d.bands.some(([t0, t1]) => t1 > t0))""",
        timeout=WAIT_MS,
    )
    # Spans lie where the points say alert, and only there.
    wrong = page.evaluate(
        """() => [...streams.entries()].flatMap(([id, s]) => s.series.filter(([t, , state]) =>
              t <= timeline.drawnAt && state === "clear" && (timeline.streams[id] || {bands: []})
                .bands.some(([t0, t1]) => t0 < t && t < t1)))"""
    )
    assert wrong == []


def test_the_recent_history_loads_on_open(
    browser_context: Any, api: httpx.Client, running: ServiceServer, blink: str
) -> None:
    """A page opened now shows the two minutes before it, not only what came since."""
    stream = blink
    history = api.get(f"/api/streams/{stream}/history").json()
    assert history["stream"] == stream and history["window_s"] == 120
    points = history["points"]
    assert points and set(points[0]) == {"at", "p_stream", "state"}
    assert [p["at"] for p in points] == sorted(p["at"] for p in points)
    assert history["now"] - 120 <= points[0]["at"] <= points[-1]["at"] <= history["now"]
    assert any(p["p_stream"] is None for p in points)  # no face: kept as such
    assert "alert" in {p["state"] for p in points}
    assert api.get("/api/streams/nobody/history").status_code == 404
    fresh = browser_context.new_page()
    fresh.add_init_script("window.openedAt = Date.now() / 1000;")
    try:
        fresh.goto(f"{running.url}/")
        fresh.wait_for_function(
            """() => [...streams.values()].some(s => s.series.some(([t]) => t < openedAt - 10))
                  && Object.values(timeline.streams).some(
                       d => d.bands.some(([t0]) => t0 < openedAt - 5))""",
            timeout=WAIT_MS,
        )
    finally:
        fresh.close()


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
        # The history too: the service's times, moved onto this clock.
        assert skewed.evaluate(
            """() => { const now = Date.now() / 1000;
                  return [...streams.values()].every(s => s.series.every(
                    ([t]) => t > now - 125 && t < now + 5)); }"""
        )
    finally:
        skewed.close()


def test_a_browser_without_the_token_is_told_how_to_get_in(
    browser_context: Any, running: ServiceServer
) -> None:
    context = browser_context.browser.new_context()  # no cookie
    try:
        anonymous = context.new_page()
        response = anonymous.goto(f"{running.url}/")
        assert response is not None and response.status == 401
        assert "/?token=" in str(anonymous.text_content("main"))
        anonymous.fill("input[name=token]", TOKEN)
        anonymous.click("button[type=submit]")
        anonymous.wait_for_selector(f'#streams tr[data-stream="{STREAMS[0]}"]', timeout=WAIT_MS)
        assert anonymous.url == f"{running.url}/"
    finally:
        context.close()
    with httpx.Client(base_url=running.url) as client:
        for accept in ("application/json", "*/*"):  # API clients still get JSON
            refused = client.get("/api/streams", headers={"Accept": accept})
            assert refused.status_code == 401
            assert refused.json() == {"detail": "missing or wrong bearer token"}
        html = client.get("/?token=wrong", headers={"Accept": "text/html"})
        assert html.status_code == 401 and "text/html" in html.headers["content-type"]
        assert "/?token=" in html.text


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
