import os

import pytest
import torch

# Under pytest-xdist (`pytest -n auto`) each worker is a process of its own: PyTorch's default of one thread per
# core in every worker would put twice as many threads as cores on two cores. Each worker takes its share instead.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    # Every test starts from the same random state, so a failure reproduces.
    torch.manual_seed(0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    # A file name that is not UTF-8 (the tests of such names) reaches the captured log as surrogate escapes,
    # which a pytest-xdist worker cannot send back (execnet: "strings must be utf-8 encodable"): send \udcXX.
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode()) for title, text in report.sections]
