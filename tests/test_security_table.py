"""The attack table in docs/SECURITY.md is rendered from a test run's report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "security_table.py"
spec = importlib.util.spec_from_file_location("security_table", SCRIPT)
security_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(security_table)


def test_rows_replace_the_table_between_the_markers_in_area_order(tmp_path):
    report = tmp_path / "report.json"
    rows = [
        {"category": "faults", "attack": "Ctrl-C", "outcome": "exit 130", "result": "passed"},
        {"category": "resources", "attack": "fork | bomb", "outcome": "EAGAIN", "result": "FAILED"},
    ]
    report.write_text(json.dumps(rows))
    document = tmp_path / "SECURITY.md"
    document.write_text(f"# Title\n\n{security_table.START}\nold table\n{security_table.END}\n\nafter\n")
    assert security_table.main(["security_table", str(report), str(document)]) == 0
    text = document.read_text()
    assert "old table" not in text and text.endswith("\n\nafter\n")
    table = [line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert table == [
        "| 1 | resources | fork \\| bomb | EAGAIN | FAILED |",
        "| 2 | faults | Ctrl-C | exit 130 | passed |",
    ]
    assert "passed for 1, not for 1" in text


def test_the_document_in_the_repository_has_the_markers_and_a_table():
    text = (Path(__file__).parents[1] / "docs" / "SECURITY.md").read_text()
    table = text.split(security_table.START, 1)[1].split(security_table.END, 1)[0]
    assert table.count("\n| ") > 50
