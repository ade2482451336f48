#!/usr/bin/env python3
"""Checks the relative links of README.md and docs/*.md: every linked file exists, and
every #anchor names a heading of the linked Markdown file (GitHub's heading ids).
Links inside code (fenced blocks, `spans`) and to other sites are not checked.

    python3 .ci/check-links.py        # from the repository root; exit 1 on a broken link
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def prose_lines(path):
    """The file's lines outside fenced code blocks, with their numbers."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading):
    """GitHub's id for a heading: the text without markup, lower case, punctuation
    dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    seen = {}
    ids = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def prose(page):
    """The page with code blocks blanked and inline code removed, line numbering kept,
    so that a link whose text wraps onto the next line is still found."""
    lines = dict(prose_lines(page))
    last = max(lines, default=0)
    return "\n".join(re.sub(r"`[^`\n]*`", "", lines.get(n, "")) for n in range(1, last + 1))


def broken_links(page):
    text = prose(page)
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        where = f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}: {target}"
        if not linked.exists():
            yield f"{where}: no such file"
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            yield f"{where}: no heading with this id"


def main():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [line for page in pages for line in broken_links(page)]
    for line in broken:
        print(line, file=sys.stderr)
    print(f"{len(broken)} broken links in README.md and {len(pages) - 1} pages of docs/")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
