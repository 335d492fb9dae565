"""Screenshot of the top of an HTML page in Debian's headless chromium (via Playwright), for
the README: `python tools/screenshot.py runs/run-cpu60/report/report.html docs/report.png`.

Loads the file offline, so a report that needs the network would show it as broken images."""

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from faceattr.atomic import atomic_path
from faceattr.browser import CHROMIUM, launch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("page", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=1400)
    p.add_argument("--chromium", default=CHROMIUM)
    args = p.parse_args()
    with sync_playwright() as pw:
        browser = launch(pw, args.chromium)
        context = browser.new_context(offline=True, viewport={"width": args.width, "height": args.height})
        page = context.new_page()
        page.goto(args.page.resolve().as_uri(), wait_until="load")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            page.screenshot(path=str(tmp), type="png", full_page=False)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
