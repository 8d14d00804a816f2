"""End to end in headless Chromium: a participant clicks through a whole Turing-test session (10 practice + 40
test trials) on the real page, then the database holds the 50 answers, the report runs, and a second session
for the same browser is refused.

Chromium is Debian's package (``tests/browser_setup.sh`` installs it if missing); Playwright's Python client
drives it through ``executable_path``, so nothing is downloaded at run time. The test skips, saying why, only if
Chromium or Playwright cannot be had.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xchannel.color import lab_to_rgb, rgb_to_lab
from xchannel.turing.pairs import make_pairs
from xchannel.turing.protocol import ProtocolConfig
from xchannel.turing.report import markdown, summarize_db
from xchannel.turing.server import build_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SETUP = Path(__file__).with_name("browser_setup.sh")
DISPLAY_MS = 60


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        try:
            subprocess.run(["bash", str(SETUP)], check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as err:
            pytest.skip(f"headless Chromium is not installed and {SETUP} could not install it ({err})")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found after running {SETUP}")
    return CHROMIUM


@pytest.fixture()
def server(tmp_path):
    rng = np.random.default_rng(0)
    real, fake = tmp_path / "photos", tmp_path / "colorized"
    real.mkdir()
    fake.mkdir()
    y, x = np.mgrid[0:48, 0:48] / 48.0
    for i in range(8):
        rgb = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y)
                                           + rng.uniform(0, 6)) for _ in range(3)], -1)
        lab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
        lab[:, 1] = -lab[:, 1]  # a (bad) recolouring that keeps the lightness: green <-> red
        for folder, image in ((real, rgb), (fake, lab_to_rgb(lab)[0].permute(1, 2, 0).numpy())):
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    make_pairs(real, {"ours_full": fake}, tmp_path / "pairs", size=64, seed=0, progress=False)
    srv = build_server(tmp_path / "pairs", tmp_path / "answers.sqlite", port=0, seed=0, quiet=True,
                       cfg=ProtocolConfig(display_ms=DISPLAY_MS), methods=["ours_full"])
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, tmp_path / "answers.sqlite"
    srv.shutdown()
    srv.server_close()
    srv.app.store.close()


def test_a_participant_completes_one_session_in_chromium(chromium, server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python client is not installed "
                                                                 "(pip install playwright; part of the test extra)")
    srv, db = server
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(srv.url)
            assert f"{DISPLAY_MS / 1000:g} seconds" in page.inner_text("#intro")
            page.click("#start")
            answered, states = 0, []
            while True:
                page.wait_for_selector("body[data-state=respond], body[data-state=feedback], "
                                       "body[data-state=break], body[data-state=done], body[data-state=error]",
                                       state="attached", timeout=15_000)
                state = page.get_attribute("body", "data-state")
                states.append(state)
                if state == "respond":
                    # The pair has been shown and hidden again: only the two answer buttons remain.
                    assert page.is_hidden("#img-left") and page.is_hidden("#img-right")
                    assert page.is_enabled("#choice-left") and page.is_enabled("#choice-right")
                    side = "left" if answered % 3 else "right"
                    page.click(f"#choice-{side}")
                    answered += 1
                    page.wait_for_selector("body:not([data-state=respond])", state="attached")
                elif state == "feedback":
                    assert page.inner_text("#feedback-text").startswith(("Correct", "Incorrect"))
                    page.click("#continue")
                elif state == "break":
                    page.click("#begin-test")
                elif state == "done":
                    break
                else:
                    pytest.fail(f"the page shows an error: {page.inner_text('#error-text')}")
            code = page.inner_text("#completion-code")
            assert answered == 50
            assert states.count("feedback") == 10 and states.count("break") == 1

            assert errors == []  # no script errors, no Content-Security-Policy violations

            # A second visit from the same browser (cookie + localStorage) is refused (HTTP 409).
            page.reload()
            page.click("#start")
            page.wait_for_selector("body[data-state=done]", state="attached")
            assert "already completed" in page.inner_text("#done-text")
            assert page.inner_text("#completion-code") == code
        finally:
            browser.close()
    assert errors == ["Failed to load resource: the server responded with a status of 409 (Conflict)"]

    store = srv.app.store
    rows = store.answers()
    assert len(rows) == 50 and len({a.participant_id for a in rows}) == 1
    assert sum(a.is_practice for a in rows) == 10 and sum(a.is_attention_check for a in rows) == 4
    assert all(a.server_ms >= DISPLAY_MS and a.response_ms >= 0 for a in rows)
    assert [a.clicked_side for a in rows] == ["right" if i % 3 == 0 else "left" for i in range(50)]
    sessions = store.sessions()
    assert len(sessions) == 1 and sessions[0].completed and sessions[0].completion_code == code

    summary = summarize_db(db, n_boot=200)
    fool = summary["methods"]["ours_full"]["fool_rate"]
    expected = sum(a.fooled for a in rows if not a.is_practice and not a.is_attention_check) / 36
    assert fool["trials"] == 36 and fool["rate"] == pytest.approx(expected)
    assert "Ours (full)" in markdown(summary)
