"""The documentation stays wired up: nav targets exist, API pages name real modules, and the
README's quick start is the two commands CI runs. (CI also builds the site with
``mkdocs build --strict``; these checks are the seconds-fast part of that.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _nav_files(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_every_nav_entry_is_a_page_and_every_page_is_in_the_nav() -> None:
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_files(cfg["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    missing = [f for f in nav if not (DOCS / f).is_file()]
    assert not missing, f"nav entries without a page: {missing}"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - set(nav) == set(), f"pages missing from the nav in mkdocs.yml: {sorted(pages - set(nav))}"


def test_api_reference_names_modules_that_exist() -> None:
    targets = []
    for page in (DOCS / "reference").glob("*.md"):
        targets += re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), flags=re.M)
    assert "pneumoscope" in targets and len(targets) > 20
    for target in targets:
        rel = Path("src", *target.split("."))
        assert (ROOT / rel.with_suffix(".py")).is_file() or (ROOT / rel / "__init__.py").is_file(), target


def test_readme_quick_start_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in commands:
        assert (ROOT / command.split()[1]).is_file()
        # as written, with no test selection (at most the demo's --no-progress for CI logs)
        assert re.search(rf"^{re.escape(command)}( --no-progress)?( \|\|.*)?$", ci, flags=re.M), \
            f".ci/run does not run {command}"
    assert re.search(r"^.*mkdocs build --strict", ci, flags=re.M)


def test_readme_links_into_the_docs_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    assert [link for link in links if not (ROOT / link).is_file()] == []
