"""The CLI: help is instant and lists commands; config errors are one line with a non-zero exit."""
from __future__ import annotations

import subprocess
import sys

from flywheel.cli import main, split_overrides


def test_split_overrides_keeps_options_apart():
    opts, ov = split_overrides(["episodes", "--task", "pick", "--json", "db.url=x", "preset=demo", "--k=v"])
    assert opts == ["episodes", "--task", "pick", "--json", "--k=v"]
    assert ov == ["db.url=x", "preset=demo"]


def test_help_runs_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", "--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0
    assert "usage: flywheel" in out.stdout


def test_bad_override_exits_nonzero_with_one_line(capsys, tmp_path):
    rc = main(["run", f"data_dir={tmp_path}", "db.bogus=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "db.bogus" in err[0]
