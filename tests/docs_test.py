"""The prose: the README is a front page, and every link in it and in docs/ resolves."""

from __future__ import annotations

import glob
import os
import re

from conftest import REPO

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped
    (hyphens and underscores kept), spaces to hyphens."""
    with open(path, encoding="utf-8") as f:
        headings = [line.lstrip("#").strip() for line in f if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _broken_links(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    broken = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (
            os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        )
        if not os.path.exists(resolved):
            broken.append(f"{os.path.relpath(path, REPO)}: {target} (no such file)")
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
            broken.append(f"{os.path.relpath(path, REPO)}: {target} (no such heading)")
    return broken


def test_every_link_of_the_readme_and_the_docs_resolves():
    pages = [os.path.join(REPO, "README.md"), *glob.glob(os.path.join(REPO, "docs", "*.md"))]
    assert len(pages) >= 8
    assert [b for page in pages for b in _broken_links(page)] == []


def test_the_link_check_sees_a_broken_file_and_a_broken_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A heading, with punctuation\n"
        "[ok](#a-heading-with-punctuation) [file](page.md) [gone](nothing.md) "
        "[bad](page.md#no-such-heading) [web](https://example.com)\n"
    )
    assert [b.split(": ", 1)[1] for b in _broken_links(str(page))] == [
        "nothing.md (no such file)",
        "page.md#no-such-heading (no such heading)",
    ]


def test_the_readme_is_a_front_page():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 250
    # The two quickstart commands, and a section for each kind of user.
    assert "tools/demo.sh" in readme and "tools/test.sh" in readme
    for section in ("run the binaries", "embed the pipeline", "benchmark throughput"):
        assert f"## For people who {section}" in readme
