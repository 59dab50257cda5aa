"""The hostile probe (tests/hostile_probe.py) in its quick form: a sample of every group of hostile and careless
inputs through the CLI, none accepted silently, none a traceback, no correct input refused."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_quick_probe_finds_no_bug(tmp_path):
    out = tmp_path / "probe.json"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "hostile_probe.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["cases"] > 150, found["cases"]
    assert found["counts"]["SILENT"] == found["counts"]["TRACEBACK"] == found["counts"]["WRONG"] == 0, found["bad"]
