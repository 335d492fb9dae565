"""Screenshot of the `faceattr serve` page with a prediction and its Grad-CAM, for the README:
`python tools/serve_screenshot.py docs/serve.png`. Serves the shipped model on a free loopback
port, uploads scikit-image's astronaut photo in Debian's headless chromium (Playwright), asks
for Grad-CAM and saves the page."""

import argparse
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright
from skimage import data as skdata

from faceattr.atomic import atomic_path
from faceattr.browser import launch
from faceattr.predictor import Predictor
from faceattr.serve import create_app, running


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    args = p.parse_args()
    app = create_app(Predictor.from_pretrained(backend="torch"))
    with tempfile.TemporaryDirectory() as tmp, running(app) as url, sync_playwright() as pw:
        photo = Path(tmp) / "astronaut.jpg"
        Image.fromarray(skdata.astronaut()).save(photo, quality=92)
        browser = launch(pw)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('test:')")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("article.face")
        page.click("#why")
        page.wait_for_selector(".cams img")
        page.wait_for_function("[...document.querySelectorAll('.cams img')].every(i => i.complete)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp_png:
            page.screenshot(path=str(tmp_png), type="png")
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
