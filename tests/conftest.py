"""Test-session setup shared by every test file.

- Eight host CPU devices so sharding tests can build real meshes (1x1, 8x1, 2x4); this must happen before jax is
  imported anywhere in the process.
- Isolation: seqio tasks and mixtures a test registers are removed after it, so no test sees another's.
- `--random-order-seed=N` runs the test files in a seeded random order, and the tests of each file in a seeded
  random order (files stay together, so module fixtures are built once); the default is the file order.
- With PROMPT_TUNING_JAX_REQUIRE_PARITY=1 (CI), a test skipped for a missing optional oracle (torch,
  transformers, peft, t5x; see `_optional.py`) fails the session instead of vanishing.
"""

import os
import random

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import seqio  # noqa: E402
from _optional import SKIP_REASON  # noqa: E402

import prompt_tuning_jax.data.tasks  # noqa: E402, F401 (the package's tasks, registered before any test runs)

REQUIRE_PARITY_ENV = "PROMPT_TUNING_JAX_REQUIRE_PARITY"
_parity_skips: list[str] = []


def pytest_addoption(parser):
  parser.addoption("--random-order-seed", type=int, default=None,
                   help="shuffle test files, and the tests within each file, with this seed")


def pytest_collection_modifyitems(config, items):
  seed = config.getoption("--random-order-seed")
  if seed is None:
    return
  rng = random.Random(seed)
  files: dict[str, list] = {}
  for item in items:
    files.setdefault(item.nodeid.split("::")[0], []).append(item)
  order = list(files.values())
  rng.shuffle(order)
  for group in order:
    rng.shuffle(group)
  items[:] = [item for group in order for item in group]


def pytest_report_header(config):
  seed = config.getoption("--random-order-seed")
  return f"test order: {'file order' if seed is None else f'random, --random-order-seed={seed}'}"


@pytest.fixture(autouse=True)
def _remove_tasks_registered_by_the_test():
  before = {registry: set(registry.names()) for registry in (seqio.TaskRegistry, seqio.MixtureRegistry)}
  yield
  for registry, names in before.items():
    for name in set(registry.names()) - names:
      registry.remove(name)


def pytest_runtest_logreport(report):
  if report.skipped and SKIP_REASON in str(report.longrepr):
    _parity_skips.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
  if os.environ.get(REQUIRE_PARITY_ENV) == "1" and _parity_skips:
    print(f"\n{REQUIRE_PARITY_ENV}=1 but {len(_parity_skips)} parity test(s) were skipped for a missing optional "
          f"dependency: {', '.join(sorted(set(_parity_skips)))}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
