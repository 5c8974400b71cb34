"""``scripts/test.sh``: which pytest exit codes pass, run against a stand-in pytest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sandbox(tmp_path) -> Path:
    """A copy of scripts/test.sh beside a no-op setup.sh and a '.venv/bin/python' that records its
    arguments and exits with $FAKE_PYTEST_RC."""
    if shutil.which("bash") is None:
        pytest.skip("no bash on this machine (scripts/test.sh is a bash script)")
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "test.sh", tmp_path / "scripts" / "test.sh")
    (tmp_path / "scripts" / "setup.sh").write_text("exit 0\n", encoding="utf-8")
    py = tmp_path / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text('#!/usr/bin/env bash\necho "$@" > "$(dirname "$0")/args"\nexit "$FAKE_PYTEST_RC"\n', encoding="utf-8")
    py.chmod(0o755)
    return tmp_path


def run(sandbox: Path, rc: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(sandbox / "scripts" / "test.sh"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "FAKE_PYTEST_RC": str(rc)}, timeout=30)


@pytest.mark.parametrize(
    ("rc", "args", "expected"),
    [
        (0, (), 0),
        (1, (), 1),
        (5, (), 0),  # the whole default run collected nothing: not a failure
        (0, ("-m", "slow"), 0),
        (1, ("-m", "slow"), 1),
        (5, ("-m", "slow"), 5),  # a selection that matches nothing fails
        (5, ("-k", "no_such_test"), 5),
        (5, ("tests/test_nothing.py",), 5),
        (2, ("-k", "x"), 2),
    ],
)
def test_exit_codes(sandbox, rc, args, expected):
    r = run(sandbox, rc, *args)
    assert r.returncode == expected, (r.stdout, r.stderr)
    assert (sandbox / ".venv" / "bin" / "args").read_text().split() == ["-m", "pytest", "-q", *args]
    if rc == 5 and args:
        assert "no tests matched the selection" in r.stderr
