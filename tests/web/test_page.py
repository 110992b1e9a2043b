"""The browser page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): it loads, streams the example files (or the fake microphone) live, receives frames,
schedules the echoed audio, and draws a non-blank canvas.

Skipped when chromium or chromedriver is missing, unless ``DITTO_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs both), where a missing browser fails the test instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_AUDIO, EXAMPLE_IMAGE

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
_missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
try:
    import selenium  # noqa: F401
except ImportError:
    _missing.append("the selenium package")
if _missing and os.environ.get("DITTO_REQUIRE_BROWSER") != "1":
    pytestmark = pytest.mark.skip(reason=f"browser test needs {', '.join(_missing)} "
                                         "(apt-get install chromium chromium-driver; .ci/run does)")

CANVAS_SPREAD_JS = """
const c = document.getElementById('video');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0, sum = 0, sq = 0;
for (let i = 0; i < d.length; i += 4 * 97) { const y = (d[i] + d[i + 1] + d[i + 2]) / 3; n++; sum += y; sq += y * y; }
const mean = sum / n;
return {mean: mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)), width: c.width, height: c.height};
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    assert not _missing, f"browser test needs {', '.join(_missing)}"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, condition_js: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        ok, stats = driver.execute_script(f"const s = window.dittoStats; return [Boolean({condition_js}), s];")
        if ok:
            return stats
        if stats.get("state") == "error" or time.monotonic() > deadline:
            logs = "\n".join(str(e) for e in driver.get_log("browser"))
            pytest.fail(f"waiting for {condition_js}: {stats}\nbrowser console:\n{logs}")
        time.sleep(0.1)


@pytest.fixture
def lite_server(start_server):
    from ditto.backends.lite import LiteBackend

    if not (EXAMPLE_AUDIO.is_file() and EXAMPLE_IMAGE.is_file()):
        pytest.skip("example/audio.wav and example/image.png are needed")
    return start_server(backend=LiteBackend(), max_size=384)


def stream_and_check(browser, server, audio_choice: str, min_frames: int) -> dict:
    browser.get(f"{server.http}/")
    assert browser.title == "Ditto live"
    browser.find_element("css selector", f"input[name=audio][value={audio_choice}]").click()
    browser.find_element("id", "start").click()
    wait_for(browser, f"s.framesReceived >= {min_frames} && s.framesDrawn > 0", 40)
    browser.find_element("id", "stop").click()  # end_of_audio: the server finishes and completes
    stats = wait_for(browser, "s.state === 'done'", 20)
    completed = stats["completed"]
    assert completed["frames_sent"] == stats["framesReceived"] >= min_frames
    assert stats["audioChunksScheduled"] >= stats["framesReceived"]  # the echo, one per frame slot
    assert stats["firstFrameLatencyMs"] is not None and stats["firstFrameLatencyMs"] < 5000
    assert stats["chunksSent"] > 0 and stats["error"] is None
    canvas = browser.execute_script(CANVAS_SPREAD_JS)
    assert (canvas["width"], canvas["height"]) == (384, 384)
    assert canvas["std"] > 10 and canvas["mean"] > 5, canvas  # a portrait, not a blank canvas
    return stats


def test_page_streams_example_files_live(browser, lite_server):
    stats = stream_and_check(browser, lite_server, "example", min_frames=25)
    assert stats["lagP95Ms"] is not None and stats["lagP95Ms"] < 3000
    panel = browser.find_element("id", "panel").text
    assert "FPS" in panel and "first frame" in panel and "lag p50" in panel


def test_page_streams_fake_microphone(browser, lite_server):
    stream_and_check(browser, lite_server, "mic", min_frames=15)
