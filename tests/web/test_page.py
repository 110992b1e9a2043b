"""The browser page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): it loads, streams the example files (or the fake microphone) live, receives frames,
schedules the echoed audio, and draws a non-blank canvas; Interrupt sends ``interrupt``, and the
conversation mode ends an utterance at a pause of Chromium's fake microphone (it beeps).
The round trips of #9 run both against :mod:`tests.client.contract_server` (a small server that
speaks the contract) and against the real server.

Skipped when chromium or chromedriver is missing, unless ``DITTO_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs both), where a missing browser fails the test instead.
"""

from __future__ import annotations

import os
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
    pytestmark = pytest.mark.skip(
        reason=f"browser test needs {', '.join(_missing)} (apt-get install chromium chromium-driver; .ci/run does)"
    )

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
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class _PageFailed(Exception):
    pass


def wait_for(driver, condition_js: str, timeout_s: float) -> dict:
    """``window.dittoStats`` once ``condition_js`` (over it, as ``s``) holds; fails at once when
    the page reports an error, and after ``timeout_s``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def reached(d):
        ok, stats = d.execute_script(f"const s = window.dittoStats; return [Boolean({condition_js}), s];")
        if not ok and stats.get("state") == "error":
            raise _PageFailed(stats)
        return stats if ok else False

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(reached)
    except (TimeoutException, _PageFailed):
        stats = driver.execute_script("return window.dittoStats;")
        logs = "\n".join(str(e) for e in driver.get_log("browser"))
        pytest.fail(f"waiting for {condition_js}: {stats}\nbrowser console:\n{logs}")


@pytest.fixture
def contract_server():
    from tests.client.contract_server import ContractServer

    server = ContractServer().start()
    yield server
    server.stop()


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


def start_example_and_interrupt(browser, server) -> dict:
    """Start the example speech, press Interrupt after 10 frames; the page's stats just before."""
    browser.get(f"{server.http}/")
    button = browser.find_element("id", "interrupt")
    assert button.text == "Interrupt" and not button.is_enabled()  # nothing to interrupt yet
    browser.find_element("id", "start").click()
    before = wait_for(browser, "s.framesReceived >= 10", 40)
    button.click()
    wait_for(browser, "s.interrupts === 1", 5)
    return before


def test_interrupt_button_sends_interrupt(browser, lite_server):
    start_example_and_interrupt(browser, lite_server)
    # interrupt, not end_of_audio: the session stays open; the rest of the file is not sent
    assert browser.execute_script("return window.dittoStats.controlsSent;") == ["start_streaming", "interrupt"]


def interrupt_round_trip(browser, server) -> dict:
    """Interrupt, see ``playback_finished {interrupted}`` in the panel and idle frames after it, Stop."""
    before = start_example_and_interrupt(browser, server)
    wait_for(browser, "s.playback.some((e) => e.type === 'playback_finished' && e.interrupted)", 10)
    stats = wait_for(browser, f"s.state === 'streaming' && s.idleFrames >= {before['idleFrames'] + 3}", 10)
    wait_for(browser, "document.getElementById('panel').textContent.includes('(interrupted)')", 5)
    browser.find_element("id", "stop").click()
    done = wait_for(browser, "s.state === 'done'", 20)
    assert done["completed"]["frames_sent"] == done["framesReceived"]
    assert done["controlsSent"] == ["start_streaming", "interrupt", "end_of_audio"]
    return stats


def test_interrupt_drops_the_frames_in_flight_of_the_interrupted_utterance(browser, contract_server):
    stats = interrupt_round_trip(browser, contract_server)
    assert stats["framesDropped"] >= 1  # the contract server sends one speech frame after the interrupt


def test_interrupt_returns_the_face_to_idle_and_the_session_stays_open(browser, lite_server):
    interrupt_round_trip(browser, lite_server)


def start_conversation(browser, server) -> None:
    # Chromium's fake microphone beeps about every 0.5 s with some 350 ms of near-silence (RMS
    # under 0.01) between beeps: a 250 ms hangover ends an utterance at each of those pauses
    browser.get(f"{server.http}/?vad_hangover_ms=250")
    browser.find_element("id", "conversation").click()
    assert browser.find_element("css selector", "input[name=audio][value=mic]").is_selected()
    browser.find_element("id", "start").click()


def test_conversation_mode_ends_an_utterance_at_a_pause(browser, lite_server):
    start_conversation(browser, lite_server)
    stats = wait_for(browser, "s.controlsSent.includes('end_of_utterance')", 20)
    assert stats["chunksSent"] > 0 and "end_of_audio" not in stats["controlsSent"]  # the mic stays open


def utterance_after_utterance(browser, server) -> None:
    start_conversation(browser, server)
    wait_for(browser, "s.playback.some((e) => e.type === 'playback_started' && e.utterance === 2)", 20)
    stats = wait_for(browser, "s.state === 'streaming'", 5)
    finished = [e for e in stats["playback"] if e["type"] == "playback_finished"]
    assert finished and finished[0]["utterance"] == 1 and not finished[0]["interrupted"]
    browser.find_element("id", "stop").click()
    wait_for(browser, "s.state === 'done'", 20)


def test_conversation_mode_plays_utterance_after_utterance(browser, contract_server):
    utterance_after_utterance(browser, contract_server)


def test_conversation_mode_plays_utterance_after_utterance_on_the_server(browser, lite_server):
    utterance_after_utterance(browser, lite_server)
