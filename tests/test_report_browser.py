"""report.html in a real headless browser (Debian's chromium through Playwright): every image
decodes, nothing is logged as an error, and a screenshot is kept in test-artifacts/report.png.

Skipped when /usr/bin/chromium is missing, unless FACEATTR_REQUIRE_BROWSER=1 (CI), where a
missing browser fails the test."""

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="session")  # session, like the tiny run: checked (and skipped) before it is trained
def browser():
    if not CHROMIUM.is_file():
        if os.environ.get("FACEATTR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FACEATTR_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); set FACEATTR_REQUIRE_BROWSER=1 to fail instead")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_report_opens_offline_with_every_image_and_no_errors(browser, tiny_run, tiny_report):
    page_file = tiny_run / "report" / "report.html"
    context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.goto(page_file.as_uri(), wait_until="load")
    images = page.evaluate(
        "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    context.close()
    # The report's plots plus the figure of the fake explain section.
    assert len(images) == len(list((tiny_run / "report" / "plots").glob("*.png"))) + 1
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert not problems, problems
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
