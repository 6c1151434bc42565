"""The report of a fixed run folder, page for page: refactoring the report must not change what it shows.

The run folder is committed (``tests/data/report_golden/run``, written once by ``make_run.py`` there),
and so are the pages it gives (``tests/data/report_golden/expected``). The pages are compared whole,
apart from the generation time and the PNG bytes of the plots (those depend on the fonts and the
matplotlib of the machine; the plots have their own tests in ``test_report.py``).

After a change that is meant to change the pages: ``DETOXRL_REGENERATE_GOLDEN=1 pytest
tests/test_report_golden.py`` rewrites the expected pages; review their diff before committing it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from detoxrl.report import markdown_sections, write_report

DATA = Path(__file__).parent / "data" / "report_golden"
EXPECTED = DATA / "expected"
RUN_NAME = "golden-run"  # the page's title is the folder's name

# What each case leaves out of the committed run folder.
CASES = {
    "with_compare": (),
    # compare.json and the paired table missing: the report pairs and summarises the records itself
    "without_compare": ("eval/compare.json", "eval/comparison.json"),
    "not_evaluated": ("eval",),
}


def _normalized(text: str) -> str:
    text = re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "generated <time> UTC", text)
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,<png>", text)


def _run(tmp_path: Path, leave_out: tuple[str, ...]) -> Path:
    run = tmp_path / RUN_NAME
    shutil.copytree(DATA / "run", run)
    for rel in leave_out:
        path = run / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return run


def _check(name: str, text: str) -> None:
    expected = EXPECTED / f"{name}.golden"  # not .html: the pages are data, not source
    if os.environ.get("DETOXRL_REGENERATE_GOLDEN"):
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(text, encoding="utf-8")
    assert expected.is_file(), f"{expected} is missing: regenerate the golden pages (see this module's docstring)"
    assert text == expected.read_text(encoding="utf-8"), (
        f"the report differs from {expected.name} (regenerate only for a change meant to show)")


@pytest.mark.parametrize("case", list(CASES))
def test_report_pages_are_unchanged(tmp_path, case):
    paths = write_report(_run(tmp_path, CASES[case]))
    _check(f"{case}.html", _normalized(paths["html"].read_text(encoding="utf-8")))
    _check(f"{case}.md", _normalized(paths["markdown"].read_text(encoding="utf-8")))


@pytest.mark.parametrize("case", ["with_compare", "without_compare"])
def test_markdown_sections_are_unchanged(tmp_path, case):
    """The sections the model card takes from the report (:func:`detoxrl.report.markdown_sections`)."""
    sections = markdown_sections(_run(tmp_path, CASES[case]))
    _check(f"{case}.sections.md", "".join(f"<!-- {key} -->\n{text}" for key, text in sections.items()))


def test_the_run_folder_is_left_as_it_was(tmp_path):
    """Rendering reads the run's files and writes only RUN/report/."""
    run = _run(tmp_path, CASES["without_compare"])
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    write_report(run)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and "report" not in p.parts}
    assert after == before
