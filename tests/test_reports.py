"""The reports package: the published numbers are package data (an installed, non-editable wheel has them, and
every file validates), the loader refuses malformed files, numbers are formatted one way, and the layering holds
(nothing outside the CLI imports ``xchannel.commands``; the reports import no training code)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest

from xchannel.reports import published
from xchannel.reports.format import interval, plus_minus, value_range

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "xchannel"


def _data_files() -> list[str]:
    return sorted(p.name for p in resources.files("xchannel.reports.published").iterdir() if p.name.endswith(".json"))


def test_every_published_file_is_package_data_and_validates():
    names = _data_files()
    assert {"figure7.json", "table1.json", "table2.json", "pretext_imagenet_linear.json",
            "pretext_pascal.json"} <= set(names)
    assert published.available() == [n[:-5] for n in names]
    for name in published.available():
        data = published.load(name)
        assert data["id"] == name and data["rows"] and data["source"]
    # declared as package data, so a wheel carries them
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["xchannel"]
    for name in names:
        assert any(fnmatch(f"reports/published/{name}", pat) for pat in patterns), name
    assert not (REPO / "benchmarks" / "published").exists()  # one copy of the numbers


def test_published_numbers_load_from_an_installed_wheel(tmp_path):
    """Build a non-editable wheel from the sources, install it into a folder, and read every published file from
    there (a process that does not see the checkout)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "xchannel", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("xchannel-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import json, xchannel.reports.published as p; "
            "print(json.dumps({'file': p.__file__, 'ids': p.available(), "
            "'rows': {n: len(p.load(n)['rows']) for n in p.available()}}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    got = json.loads(out.stdout)
    assert got["file"].startswith(str(tmp_path / "site"))
    assert got["ids"] == [n[:-5] for n in _data_files()] and all(got["rows"].values())


def test_loader_names_the_file_and_the_problem(tmp_path):
    good = published.load("table2")
    (tmp_path / "short.json").write_text(json.dumps({**good, "id": "short",
                                                     "rows": [{"name": "x", "values": [1.0]}]}))
    (tmp_path / "renamed.json").write_text(json.dumps(good))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(published.PublishedError, match=r"short\.json: row 'x' has 1 values for 5 columns"):
        published.load("short", tmp_path)
    with pytest.raises(published.PublishedError, match=r"renamed\.json: id 'table2' does not match"):
        published.load("renamed", tmp_path)
    with pytest.raises(published.PublishedError, match=r"broken\.json: not valid JSON"):
        published.load("broken", tmp_path)
    with pytest.raises(published.PublishedError, match=r"no published numbers 'nope'; available: broken"):
        published.load("nope", tmp_path)


def test_one_way_to_write_an_interval():
    record = {"value": 35.04, "ci95": [28.0, 42.4], "half_width": 7.2}
    assert interval(record) == "35.0 ± 7.2" == plus_minus(35.04, 7.2)
    assert interval(record, 40.0) == "40.0 ± 7.2" and interval(None, 40.0) == "40.0" and interval(None) == "—"
    assert value_range(14.4, 12.2, 17.08) == "14.4 [12.2, 17.1]"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_only_the_cli_imports_the_commands():
    offenders = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                 if p.parent != PACKAGE / "commands" and p != PACKAGE / "cli.py"
                 and any(m == "xchannel.commands" or m.startswith("xchannel.commands.") for m in _imports(p))]
    assert offenders == []


def test_reports_import_no_training_code():
    code = ("import sys, xchannel.reports.figure7, xchannel.reports.table1, xchannel.reports.table2, "
            "xchannel.reports.sweep; print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    loaded = out.stdout.split()
    banned = ("xchannel.train", "xchannel.pretext", "xchannel.models", "xchannel.features", "xchannel.probe",
              "xchannel.pascal.prepare", "xchannel.evaluation", "xchannel.commands")
    assert [m for m in loaded if m.startswith(banned)] == []


def _pascal_result(spec: str, column: str, value: float, lo: float, hi: float, pretext: str | None) -> dict:
    return {"kind": "pascal", "table2_column": column, "_path": f"{spec}-{column}.json", "created": "2026-12-07",
            "headline": {"value": value, "uncertainty": {"value": value, "ci95": [lo, hi],
                                                         "half_width": (hi - lo) / 2}},
            "row": {"encoder": spec, "spec": spec, "input_mode": "gray", "weights_fingerprint": spec,
                    "dataset": "embedded", "pretext": pretext}}


def test_table2_puts_the_calibration_rows_first_and_says_where_they_separate():
    """Issue #18: the supervised row (the ceiling) and the Gaussian row (the floor) lead the measured rows, and the
    table says per column whether the supervised encoder is above the Gaussian one beyond both 95 % intervals."""
    from xchannel.reports.table2 import calibration_lines, measured_rows

    results = [_pascal_result("ours.pt", "cls_fc8", 17.6, 16.0, 19.0, "colorization"),
               _pascal_result("gaussian:width=0.25", "cls_fc8", 10.9, 9.5, 12.5, None),
               _pascal_result("gaussian:width=0.25", "det", 10.0, 8.0, 12.0, None),
               _pascal_result("sup.pt", "cls_fc8", 38.3, 36.0, 41.0, "supervised"),
               _pascal_result("sup.pt", "det", 11.0, 9.0, 13.0, "supervised")]
    rows = measured_rows(results)
    assert [r.spec for r in rows] == ["sup.pt", "gaussian:width=0.25", "ours.pt"]
    (line,) = calibration_lines(rows)
    assert "fc8 (% mAP): separated (38.3 ± 2.5 vs 10.9 ± 1.5)" in line
    assert "Detection (% mAP): not separated" in line
    assert calibration_lines(rows[1:]) == []  # no supervised row: nothing to say
