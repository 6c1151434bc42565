"""README.md: the "Faults and bad input" table names only tests that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fault_table_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Faults and bad input", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| case", "| ---"))]


def test_every_test_named_in_the_faults_table_exists():
    rows = fault_table_rows()
    assert len(rows) >= 40, len(rows)
    missing = []
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row.rsplit(" | ", 1)[1])
        assert named, f"a row without a test: {row}"
        for module, test in named:
            path = ROOT / "tests" / module
            if not path.is_file() or not re.search(rf"^def {test}\(", path.read_text(encoding="utf-8"), re.M):
                missing.append(f"{module}::{test}")
    assert not missing, f"README names tests that do not exist: {missing}"
