"""pytest plugin of the device check: one JSON line per event, written and flushed as it happens.

Loaded with `-p benchmarks.device_report` when LUMINA_TEST_REPORT names a file. A process killed by an illegal
memory access, a hang or a timeout leaves every finished test's outcome on disk, and the test it was running
as the last `start` without a `result`: `benchmarks/device_tests.py` reads this to report (and resume) a group.

Events: {"event": "collected", "n": N}; {"event": "start", "test": nodeid};
{"event": "result", "test": nodeid, "when": "setup|call|teardown", "outcome": "passed|failed|skipped",
 "duration": s, "reason": text (skips and failures)}.
"""
from __future__ import annotations

import json
import os

_stream = None


def _write(**event) -> None:
    if _stream is not None:
        _stream.write(json.dumps(event) + "\n")
        _stream.flush()


def pytest_configure(config):
    global _stream
    path = os.environ.get("LUMINA_TEST_REPORT")
    if path and _stream is None:
        _stream = open(path, "a", buffering=1, encoding="utf-8")


def pytest_unconfigure(config):
    global _stream
    if _stream is not None:
        _stream.close()
        _stream = None


def pytest_collection_finish(session):
    _write(event="collected", n=len(session.items))


def pytest_runtest_logstart(nodeid, location):
    _write(event="start", test=nodeid)


def _reason(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):  # (file, line, "Skipped: why")
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = str(report.longrepr or "")
    return "\n".join(text.splitlines()[-40:])


def pytest_runtest_logreport(report):
    # one result per test: the call, or the setup/teardown phase that did not pass
    if report.when == "call" or report.outcome != "passed":
        event = dict(event="result", test=report.nodeid, when=report.when, outcome=report.outcome,
                     duration=round(report.duration, 3))
        if report.outcome != "passed":
            event["reason"] = _reason(report)
        _write(**event)
