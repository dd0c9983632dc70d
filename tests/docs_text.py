"""Reading the documentation (README.md and docs/) for the tests that check it.

Plain text helpers, no pytest: tests/test_docs.py checks the docs on their own (seconds),
tests/test_workflow.py checks them against a real demo run.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
# the measured studies: they refer to their own run folders (study/demo/results/...), not the demo's
RESULTS_DOCS = DOCS / "results"
# generated from the schema (emkt.config_reference); its paths are the schema's descriptions
CONFIG_REFERENCE = DOCS / "configuration.md"
# the page with the "touch one checkpoint" example of Regenerating results
TOUCH_EXAMPLE_DOC = DOCS / "pipeline.md"

# Paths under results/ that the docs show but the demo does not write: examples of a user's
# own config, or files written only when something fails.
NOT_DEMO_PATHS = {
    "results/predictions/my_cells/expanded_anchored_0/": "a user's predict: entry",
    "results/predictions/my_cells/baseline_0/": "a user's predict: entry",
    "results/logs/index_data.excluded.csv": "written only when too many files are excluded",
}


def all_docs() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def demo_docs() -> list[Path]:
    """The pages whose results/ paths are the demo's: README.md and docs/, without the measured
    studies in docs/results/ and without the generated configuration reference."""
    return [path for path in all_docs()
            if path != CONFIG_REFERENCE and RESULTS_DOCS not in path.parents]


def result_paths(text: str) -> set[str]:
    """Every concrete path under results/ that ``text`` shows, with {a,b} alternatives
    expanded; paths with placeholders ({seed}, <name>, *, NNNNN) are patterns, not files.
    A results/ inside another path (docs/results/...) or a Markdown link's target
    ("](results/...)", a link to docs/results/ from docs/) is not a results path."""
    paths = set()
    for token in re.findall(r"(?<![\w/.\-])(?<!\]\()results/[^\s`)|'\"\]]*", text):
        token = token.rstrip(".,:;")
        if any(mark in token for mark in ("<", "*", "NNNNN")):
            continue
        expanded = [token]
        while any("{" in path for path in expanded):
            path = next(p for p in expanded if "{" in p)
            start, end = path.index("{"), path.index("}")
            options = path[start + 1:end].split(",")
            if len(options) < 2:  # a placeholder such as {seed}
                expanded = [p for p in expanded if p != path]
                continue
            expanded = [p for p in expanded if p != path] + [path[:start] + o + path[end + 1:] for o in options]
        paths.update(expanded)
    return paths


def demo_result_paths() -> dict[str, list[str]]:
    """Every results/ path that the demo's pages show, with the pages that show it."""
    shown: dict[str, list[str]] = {}
    for page in demo_docs():
        for path in result_paths(page.read_text()):
            shown.setdefault(path, []).append(str(page.relative_to(REPO)))
    return shown


def touch_example(text: str | None = None) -> tuple[str, list[str]]:
    """The "touch one checkpoint" example as it is written in TOUCH_EXAMPLE_DOC: the file it
    touches and the evaluation rules its dry run lists (before aggregate and the plots)."""
    text = TOUCH_EXAMPLE_DOC.read_text() if text is None else text
    touched = re.search(r"^touch (results/models/\S+\.pth)$", text, re.MULTILINE)
    listed = re.search(r"# lists ((?:evaluate_\w+, )+)aggregate, plots", text)
    if not touched or not listed:
        raise ValueError(f"{TOUCH_EXAMPLE_DOC.relative_to(REPO)} has no touch example")
    return touched.group(1), listed.group(1).rstrip(", ").split(", ")


def without_code(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (no links or headings there)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of ``text``'s headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    fenced = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", fenced, re.MULTILINE):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def relative_links(text: str) -> list[str]:
    """Targets of ``text``'s Markdown links and images that point into the repository (not
    http(s), mailto or other schemes); "#anchor" alone points into ``text`` itself."""
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(text))
    return [target for target in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def code(text: str) -> str:
    """The code of ``text``: its fenced blocks and inline code spans, one per line."""
    blocks = re.findall(r"^(?:```|~~~)[^\n]*\n(.*?)^(?:```|~~~)", text, flags=re.MULTILINE | re.DOTALL)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL))
    return "\n".join([*blocks, *spans])


def make_targets(text: str) -> set[str]:
    """The targets of every ``make <target>`` command in ``text``'s code."""
    return set(re.findall(r"(?:^|[\s;&|(])make ([a-z][\w-]*)", code(text), re.MULTILINE))


def makefile_targets() -> set[str]:
    """The targets the Makefile defines."""
    return set(re.findall(r"^([A-Za-z][\w-]*) *:(?!=)", (REPO / "Makefile").read_text(), re.MULTILINE))
