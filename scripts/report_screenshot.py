"""Screenshot the demo's HTML report for the README and the docs (docs/assets/report.png).

Run the demo first, then point this at its report:

    python -m pneumoscope demo --out /tmp/docs-demo --no-progress
    python scripts/report_screenshot.py /tmp/docs-demo/report.html --out docs/assets/report.png

Uses Playwright with the system Chromium (/usr/bin/chromium, headless), as the viewer's browser
test does. The picture stacks three parts of the page at a desktop width: the title and the
headline metrics, the case gallery, and the answer to "do the explanations point at the
lesions?"; it is saved as a palette PNG so it stays small enough for a README.
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


# The title and the headline-metrics table; the gallery's heading and legend, then its last rows
# (the PNEUMONIA cases, where the hotspots and lesion outlines are); the pointing section.
_PARTS_JS = """([galleryRows, legend]) => {
  const h2 = [...document.querySelectorAll('h2')];
  const find = (prefix) => h2.findIndex(h => h.textContent.startsWith(prefix));
  const top = (el) => el.getBoundingClientRect().top + window.scrollY;
  const bottom = (el) => el.getBoundingClientRect().bottom + window.scrollY;
  const after = (el, tag) => { let e = el.nextElementSibling; while (e && !e.matches(tag) && !e.querySelector(tag)) e = e.nextElementSibling; return e && (e.matches(tag) ? e : e.querySelector(tag)); };
  const metrics = find('Headline metrics'), gallery = find('Case gallery'), pointing = find('Do the explanations');
  if (metrics < 0 || gallery < 0 || pointing < 0) return null;
  const table = after(h2[metrics], 'table'), img = after(h2[gallery], 'img');
  if (!table || !img) return null;
  return [
    [0, bottom(table) + 16],
    [top(h2[gallery]) - 8, top(img) + legend],
    [Math.max(top(img) + legend, bottom(img) - galleryRows), bottom(img) + 8],
    [top(h2[pointing]) - 8, top(h2[pointing + 1]) - 8],
  ];
}"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="report.html written by `pneumoscope demo`")
    ap.add_argument("--out", type=Path, default=Path("docs/assets/report.png"))
    ap.add_argument("--width", type=int, default=1200, help="viewport width in CSS pixels")
    ap.add_argument("--gallery-rows", type=int, default=352, help="CSS pixels kept from the bottom of the gallery")
    ap.add_argument("--legend", type=int, default=40, help="CSS pixels kept from the top of the gallery (its legend)")
    ap.add_argument("--colors", type=int, default=256, help="palette size of the saved PNG")
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
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(args.report.resolve().as_uri())
            page.wait_for_load_state("load")
            # (top, bottom) in page pixels of each part, from the report's own headings.
            parts = page.evaluate(_PARTS_JS, [args.gallery_rows, args.legend])
            full = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        finally:
            browser.close()

    if not parts:
        print(f"error: {args.report}: not a pneumoscope demo report (headings not found)", file=sys.stderr)
        return 2
    crops = [full.crop((0, int(top), full.width, int(bottom))) for top, bottom in parts]
    img = Image.new("RGB", (full.width, sum(c.height for c in crops)), "white")
    y = 0
    for c in crops:
        img.paste(c, (0, y))
        y += c.height
    small = img.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    small.save(tmp, format="PNG", optimize=True)
    tmp.replace(args.out)  # never a half-written image in the docs
    print(f"{args.out}: {img.width}x{img.height}, {args.out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
