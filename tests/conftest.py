import os

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def device_params():
    """cpu always; cuda as a parameter marked `cuda`, skipped (never failed) without a GPU."""
    return [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda",
            id="cuda",
            marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")],
        ),
    ]


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Fresh random inputs on every run; the seed is printed with any failure to reproduce it."""
    seed = int(os.environ.get("LUMINA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for k, v in item.user_properties:
            if k == "seed":
                report.sections.append(("seed", f"reproduce with LUMINA_TEST_SEED={v}"))


def pytest_addoption(parser):
    parser.addoption("--head-dim", default=None, metavar="D|none",
                     help="keep only parametrized cases whose `shape` ends in head dim D (`none`: the tests without a "
                          "`shape` parameter); the device check runs the attention tests one head dim per process")


def pytest_collection_modifyitems(config, items):
    want = config.getoption("--head-dim")
    if want is None:
        return
    keep, drop = [], []
    for item in items:
        shape = getattr(item, "callspec", None) and item.callspec.params.get("shape")
        dim = str(shape[-1]) if isinstance(shape, tuple) else "none"
        (keep if dim == want else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
