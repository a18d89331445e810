"""Render the escape suite's observations as the table that ends docs/SECURITY.md.

Usage: python scripts/security_table.py REPORT.json [docs/SECURITY.md]

REPORT.json is what the test run writes when RLMBOX_SECURITY_REPORT names it (``make security-report`` does
both). The table replaces everything between the two marker comments in the document.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

START = "<!-- attack-table:start -->"
END = "<!-- attack-table:end -->"
ORDER = (
    "resources",
    "filesystem",
    "secrets",
    "privilege",
    "network",
    "protocol",
    "bridge",
    "host",
    "serve",
    "viewer",
    "results",
    "faults",
)


def render(rows: list[dict[str, str]]) -> str:
    rows = sorted(rows, key=lambda r: ORDER.index(r["category"]) if r["category"] in ORDER else 99)
    passed = sum(r["result"] == "passed" for r in rows)
    lines = [
        f"Generated from the test run of {time.strftime('%Y-%m-%d')} on {platform.system()} "
        f"{platform.release()} ({platform.machine()}): {len(rows)} attacks and faults; the tests asserting "
        f"containment (or recovery) passed for {passed}, not for {len(rows) - passed}.",
        "",
        "| # | area | attack or fault | observed | test |",
        "|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, start=1):
        cells = [str(number), row["category"], row["attack"], row["outcome"], row["result"]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    report = Path(argv[1])
    document = Path(argv[2] if len(argv) == 3 else "docs/SECURITY.md")
    try:
        rows = json.loads(report.read_text())
    except FileNotFoundError:
        print(f"security_table: {report} does not exist: run `make security-report`", file=sys.stderr)
        return 1
    text = document.read_text()
    if START not in text or END not in text:
        print(f"security_table: {document} lacks the {START} / {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    document.write_text(f"{head}{START}\n{render(rows)}\n{END}{tail}")
    print(f"security_table: {len(rows)} rows written to {document}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
