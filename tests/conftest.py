"""Test-session setup shared by every test file.

- Eight host CPU devices so sharding tests can build real meshes (1x1, 8x1, 2x4); this must happen before jax is
  imported anywhere in the process.
- Isolation: seqio tasks and mixtures a test registers are removed after it, so no test sees another's.
- Order: pytest-randomly (the test extra) shuffles the files, and the tests within each file, on every run (a
  file's tests stay together, so module fixtures are built once). The header names the seed; `--randomly-seed=N`
  repeats an order, `-p no:randomly` runs in file order.
- With PROMPT_TUNING_JAX_REQUIRE_PARITY=1 (CI), a test skipped for a missing optional oracle (torch,
  transformers, peft, t5x; see `_optional.py`) fails the session instead of vanishing.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import seqio  # noqa: E402
from _optional import SKIP_REASON  # noqa: E402

import prompt_tuning_jax.data.tasks  # noqa: E402, F401 (the package's tasks, registered before any test runs)

REQUIRE_PARITY_ENV = "PROMPT_TUNING_JAX_REQUIRE_PARITY"
_parity_skips: list[str] = []


@pytest.fixture(autouse=True)
def _remove_tasks_registered_by_the_test():
  before = {registry: set(registry.names()) for registry in (seqio.TaskRegistry, seqio.MixtureRegistry)}
  yield
  for registry, names in before.items():
    for name in set(registry.names()) - names:
      registry.remove(name)


def pytest_runtest_logreport(report):
  # SKIP_REASON: the `_optional` skips; "could not import": a stray pytest.importorskip (test_suite_hygiene.py
  # forbids them, this still counts one).
  if report.skipped and any(text in str(report.longrepr) for text in (SKIP_REASON, "could not import")):
    _parity_skips.append(report.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  """The order, even under -q (pytest-randomly names its seed only in the header, which -q hides)."""
  seed = getattr(config.option, "randomly_seed", None)
  if config.pluginmanager.has_plugin("randomly") and isinstance(seed, int):
    terminalreporter.write_line(f"test order: random, --randomly-seed={seed} repeats it (-p no:randomly: file order)")
  else:
    terminalreporter.write_line("test order: file order")


def pytest_sessionfinish(session, exitstatus):
  if os.environ.get(REQUIRE_PARITY_ENV) == "1" and _parity_skips:
    print(f"\n{REQUIRE_PARITY_ENV}=1 but {len(_parity_skips)} parity test(s) were skipped for a missing optional "
          f"dependency: {', '.join(sorted(set(_parity_skips)))}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
