"""mkdocs hook: README.md lies outside docs_dir, so mkdocs does not check its links; this does.

Every relative link in README.md must name a file of the repository, and a link to a docs page
with an anchor (`docs/live.md#a-config-file`) must name a heading of that page. A broken one
fails the build, like a broken link inside the docs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
ANCHORS: dict[str, set[str]] = {}


def _readme_links(config: Any) -> tuple[Path, list[str]]:
    root = Path(config["config_file_path"]).parent
    text = (root / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # links inside code blocks are not links
    return root, [t for t in LINK.findall(text) if not SCHEME.match(t) and not t.startswith("#")]


def on_config(config: Any) -> Any:
    root, links = _readme_links(config)
    missing = [t for t in links if not (root / t.split("#", 1)[0]).exists()]
    if missing:
        raise PluginError(f"README.md links to files that do not exist: {', '.join(missing)}")
    return config


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    def walk(items: Any) -> None:
        for item in items:
            ANCHORS.setdefault(page.file.src_uri, set()).add(item.id)
            walk(item.children)

    ANCHORS.setdefault(page.file.src_uri, set())
    walk(page.toc)
    return html


def on_post_build(config: Any) -> None:
    root, links = _readme_links(config)
    docs = Path(config["docs_dir"]).resolve()
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        full = (root / path).resolve()
        if anchor and full.is_relative_to(docs) and anchor not in ANCHORS.get(full.relative_to(docs).as_posix(), set()):
            broken.append(target)
    if broken:
        raise PluginError(f"README.md links to headings that do not exist: {', '.join(broken)}")
