"""report.html in a real headless browser (Debian's chromium through Playwright): every image
decodes, nothing is logged as an error, and a screenshot is kept in test-artifacts/report.png.

The browser fixture is in conftest.py."""

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


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
