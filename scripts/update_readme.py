"""Copy the benchmark tables that scripts write under docs/ into the README, so that no number in the README is
typed by hand.

A generated block in README.md looks like this (the path is relative to the repository root):

    <!-- generated from docs/bench_train_memory.md -->
    | ... the file's content ... |
    <!-- end generated -->

`docs/stop_rule.md#Run for real` takes only the body of the section whose heading starts with "Run for real" (up
to the next heading of the same or a higher level).

    python scripts/update_readme.py           # rewrite every block from its file
    python scripts/update_readme.py --check   # exit 1 and name the stale blocks (the test suite runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?P<open><!-- generated from (?P<path>[^#>]+?)(?:#(?P<section>[^>]+?))? -->\n)"
                   r"(?P<body>.*?)(?P<end><!-- end generated -->)", re.S)


def section(text: str, heading: str, source: str) -> str:
    """The body of the first markdown section whose heading text starts with `heading`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        level = len(line) - len(line.lstrip("#"))
        if level and line[level:].strip().startswith(heading):
            end = next((j for j in range(i + 1, len(lines))
                        if 0 < len(lines[j]) - len(lines[j].lstrip("#")) <= level), len(lines))
            return "\n".join(lines[i + 1:end])
    raise SystemExit(f"error: {source} has no section headed {heading!r}")


def render(readme: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """(README with every generated block refreshed, the paths whose block changed). A missing source file is an
    error: a block that silently kept old numbers would be a stale result."""
    changed: list[str] = []

    def refresh(match: re.Match) -> str:
        source = root / match["path"]
        if not source.is_file():
            raise SystemExit(f"error: README block names {match['path']}, which does not exist")
        text = source.read_text()
        if match["section"]:
            text = section(text, match["section"].strip(), match["path"])
        body = text.strip() + "\n"
        if body != match["body"]:
            changed.append(match["path"])
        return match["open"] + body + match["end"]

    return BLOCK.sub(refresh, readme), changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = p.parse_args(argv)
    text = args.readme.read_text()
    new, changed = render(text, args.readme.resolve().parent)
    if not BLOCK.search(text):
        print(f"error: {args.readme} has no generated blocks", file=sys.stderr)
        return 1
    if args.check:
        for path in changed:
            print(f"stale: the README block from {path} differs from the file "
                  "(run python scripts/update_readme.py)", file=sys.stderr)
        return 1 if changed else 0
    if changed:
        args.readme.write_text(new)
    print(f"updated {len(changed)} block(s): {', '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
