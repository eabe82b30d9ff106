"""Where the suite's time goes: progress a person can read while it runs, and a table at the end.

A pytest plugin (registered by tests/conftest.py). While the suite runs it prints one line
when a test module starts and one when it ends, and the labs announce their phases
(``with phase("armfleet: ground truth"):``) as they enter and leave them, each line with the
time since the session began -- so a 30-minute lab is visibly busy, not "4%" of dots. At the
end it prints wall time per module and per lab phase against the CI budget (issue 20: the
README's test command within 55 minutes on a fresh 2-core machine), and writes the same as
JSON to $ABIGUARD_TIMES (default: test-times.json beside the checkout's .venv, not in the repo
tree's tracked files).

Phases nest: a phase inside another is printed indented and counted within its parent, so
the table's rows under a module never add up to more than the module.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:           # the labs' drivers import phase() outside pytest too
    import pytest

#: the CI issue's budget for the README's test command, cold, on 2 cores
BUDGET_S = 55 * 60

_T0 = time.monotonic()
_config = None              # pytest's config, once it has configured this plugin
_reporter = None            # the terminal reporter, looked up on first use
_capman = None              # pytest's capture manager: suspended while we print
_modules: dict[str, dict] = {}
_phases: list[dict] = []    # in the order they began
_stack: list[dict] = []
_current_module: str | None = None


def _clock() -> str:
    s = int(time.monotonic() - _T0)
    return f"{s // 60:3d}m{s % 60:02d}s"


def say(text: str) -> None:
    """One progress line on the real terminal (not captured), prefixed with the time so far."""
    global _reporter
    line = f"[{_clock()}] {text}"
    if _reporter is None and _config is not None:
        # registered by pytest's own pytest_configure, which may run after this plugin's
        _reporter = _config.pluginmanager.getplugin("terminalreporter")
    if _reporter is None:                 # outside pytest (a lab driver run by hand)
        print(line, flush=True)
        return
    cm = _capman.global_and_fixture_disabled() if _capman is not None else contextlib.nullcontext()
    with cm:
        # -q prints its dots without a path, so ensure_newline() does not know a line is open
        if getattr(_reporter._tw, "width_of_current_line", 0):
            _reporter._tw.line()
        _reporter.write_line(line)
        _reporter.flush()       # now, while capture is off: a buffered line would land in the capture


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A named lab phase: announced when entered and left, timed, and listed in the table under
    the module that ran it."""
    rec = {"name": name, "module": _current_module, "depth": len(_stack), "seconds": None, "ok": False}
    _phases.append(rec)
    _stack.append(rec)
    say(f"{'  ' * (rec['depth'] + 1)}> {name}")
    t0 = time.monotonic()
    try:
        yield
        rec["ok"] = True
    finally:
        rec["seconds"] = round(time.monotonic() - t0, 1)
        _stack.pop()
        say(f"{'  ' * (rec['depth'] + 1)}< {name}: {rec['seconds']:.0f} s{'' if rec['ok'] else ' (failed)'}")


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_configure(config: pytest.Config) -> None:
    global _config, _capman
    _config = config
    _capman = config.pluginmanager.getplugin("capturemanager")


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    global _current_module
    mod = _module_of(nodeid)
    if mod != _current_module:
        _end_module()
        _current_module = mod
        # a module can come twice: its pure tests run with the pure tier, its lab tests later
        m = _modules.setdefault(mod, {"seconds": 0.0, "outcomes": {}})
        m["start"] = time.monotonic()
        m.pop("end", None)
        say(f"{mod} ...")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None:
        say(f"  {item.name}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    m = _modules.get(_module_of(report.nodeid))
    if m is None:
        return
    if report.when == "call" and "lab" in report.keywords:
        # each lab test is one scenario of its lab: a row of the table
        _phases.append({"name": report.nodeid.split("::", 1)[-1], "module": _module_of(report.nodeid),
                        "depth": 0, "seconds": round(report.duration, 1), "ok": report.outcome == "passed"})
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        m["outcomes"][outcome] = m["outcomes"].get(outcome, 0) + 1
    elif report.when == "teardown" and report.outcome == "failed":
        m["outcomes"]["error"] = m["outcomes"].get("error", 0) + 1


def _end_module() -> None:
    if _current_module is None or _current_module not in _modules:
        return
    m = _modules[_current_module]
    if "end" in m:
        return
    m["end"] = time.monotonic()
    m["seconds"] = round(m["seconds"] + m["end"] - m["start"], 1)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(m["outcomes"].items()))
    say(f"{_current_module}: {counts or 'nothing run'} ({m['seconds']:.0f} s so far)")


def _fmt(s: float) -> str:
    return f"{s:8.1f}"


def setup_seconds() -> float | None:
    """what the README's test command spent before pytest (Debian packages, the virtualenv):
    packaging/setup-dev exports its start time as ABIGUARD_TEST_STARTED (epoch seconds)"""
    started = os.environ.get("ABIGUARD_TEST_STARTED", "")
    if not started.isdigit():
        return None
    return max(0.0, round(time.time() - (time.monotonic() - _T0) - int(started), 1))


def table(total: float) -> list[str]:
    setup = setup_seconds()
    whole = total + (setup or 0.0)
    rows = [f"where the time went: {whole:.0f} s of the {BUDGET_S} s budget ({100 * whole / BUDGET_S:.0f}%)",
            f"{'module / lab phase':<64} {'seconds':>8}  tests"]
    if setup is not None:
        rows.append(f"{'(packaging/setup-dev: packages and virtualenv)':<64} {_fmt(setup)}")
    for mod, m in sorted(_modules.items(), key=lambda kv: -kv[1]["seconds"]):
        counts = ", ".join(f"{n} {k}" for k, n in sorted(m["outcomes"].items()))
        rows.append(f"{mod:<64} {_fmt(m['seconds'])}  {counts}")
        for p in (p for p in _phases if p["module"] == mod and p["seconds"] is not None):
            label = "  " * (p["depth"] + 1) + p["name"] + ("" if p["ok"] else " (failed)")
            rows.append(f"{label:<64} {_fmt(p['seconds'])}")
    for p in (p for p in _phases if p["module"] is None and p["seconds"] is not None):
        rows.append(f"{'(before the first test) ' + p['name']:<64} {_fmt(p['seconds'])}")
    rows.append(f"{'pytest session':<64} {_fmt(total)}")
    rows.append(f"{'total':<64} {_fmt(whole)}")
    return rows


def _times_path(config: pytest.Config) -> Path:
    if os.environ.get("ABIGUARD_TIMES"):
        return Path(os.environ["ABIGUARD_TIMES"])
    return Path(str(config.rootpath)) / ".venv" / "test-times.json"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    _end_module()
    total = round(time.monotonic() - _T0, 1)
    for line in table(total):
        terminalreporter.write_line(line)
    setup = setup_seconds()
    whole = total + (setup or 0.0)
    doc = {"budget_s": BUDGET_S, "total_s": whole, "pytest_s": total, "setup_s": setup,
           "exit_status": int(exitstatus),
           "modules": {k: {"seconds": v["seconds"], "outcomes": v["outcomes"]} for k, v in _modules.items()},
           "phases": [{k: p[k] for k in ("module", "name", "depth", "seconds", "ok")} for p in _phases]}
    out = _times_path(config)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        terminalreporter.write_line(f"(the same as JSON: {out})")
    except OSError as e:
        terminalreporter.write_line(f"(could not write {out}: {e})")
    if whole > BUDGET_S:
        terminalreporter.write_line(f"OVER BUDGET: {whole:.0f} s > {BUDGET_S} s (tests/helpers/timing.py, issue 20)")
