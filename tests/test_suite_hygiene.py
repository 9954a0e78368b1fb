"""The suite's own rules, checked on its source: optional oracles are skipped only through `_optional` (so CI's
PROMPT_TUNING_JAX_REQUIRE_PARITY=1 sees every such skip), and no test skips a whole module at import.

`pytest.importorskip` at module level skips the file during collection, where (under pytest-xdist) no test report
is ever made, so a missing torch or t5x would remove those tests without a trace.
"""

import os
import re

TESTS = os.path.dirname(os.path.abspath(__file__))
FORBIDDEN = re.compile(r"\bimportorskip\(|allow_module_level\s*=\s*True")


def test_no_test_file_skips_outside_the_optional_module():
  offenders = []
  for name in sorted(os.listdir(TESTS)):
    if not name.endswith(".py") or name in ("_optional.py", os.path.basename(__file__)):
      continue
    with open(os.path.join(TESTS, name)) as f:
      for number, line in enumerate(f, 1):
        if FORBIDDEN.search(line):
          offenders.append(f"{name}:{number}: {line.strip()}")
  assert not offenders, ("skip optional dependencies with _optional.needs / parity_marks / require, not:\n"
                         + "\n".join(offenders))
