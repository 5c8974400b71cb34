"""Screenshot the demo's HTML report for the README and the docs (docs/assets/report.png).

Run the demo first, then point this at its report:

    python -m pneumoscope demo --out /tmp/docs-demo --no-progress
    python scripts/report_screenshot.py /tmp/docs-demo/report.html --out docs/assets/report.png

Uses Playwright with the system Chromium (/usr/bin/chromium, headless), as the viewer's browser
test does. The capture is the top of the report (metrics, curves, the start of the gallery) at
a desktop width, saved as a palette PNG so it stays small enough for a README.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# As the browser test runs it: no sandbox (containers), no network of its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="report.html written by `pneumoscope demo`")
    ap.add_argument("--out", type=Path, default=Path("docs/assets/report.png"))
    ap.add_argument("--width", type=int, default=1200, help="viewport width in CSS pixels")
    ap.add_argument("--height", type=int, default=1500, help="height of the captured top of the page")
    ap.add_argument("--colors", type=int, default=128, help="palette size of the saved PNG")
    args = ap.parse_args(argv)

    if not args.report.is_file():
        print(f"error: {args.report}: no such report (run `pneumoscope demo` first)", file=sys.stderr)
        return 2
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 2

    from PIL import Image
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(args.report.resolve().as_uri())
            page.wait_for_load_state("load")
            png = page.screenshot(full_page=False)
        finally:
            browser.close()

    img = Image.open(io.BytesIO(png)).convert("RGB")
    small = img.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    small.save(tmp, format="PNG", optimize=True)
    tmp.replace(args.out)  # never a half-written image in the docs
    print(f"{args.out}: {img.width}x{img.height}, {args.out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
