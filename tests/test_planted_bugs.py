"""The planted-bug check (scripts/planted_bugs.py) as a slow test: every mutation of core code must be caught.

The unmutated baseline is skipped here: the same tests run unmutated in this very suite.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_every_planted_bug_is_caught_by_its_tests():
  result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "planted_bugs.py"), "--jobs", "2",
                           "--skip_baseline"],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
