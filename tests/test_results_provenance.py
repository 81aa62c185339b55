"""Every figure the docs quote comes from a results file that names its code (issue 15, "every number has its
source"): each ``bench/results/*.json`` records the git commit it ran on and whether the tree was clean; a
file merged from several runs (``monai-cir evaluate --folds F --out`` one fold at a time) names each run's
commit; a file written on a dirty tree says what differed, in a ``provenance`` field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
SHA = re.compile(r"^[0-9a-f]{40}$")
FILES = sorted(RESULTS.glob("*.json"))


def recorded_runs(payload: dict[str, Any]) -> list[tuple[Any, Any]]:
    """``(commit, dirty)`` of every run a results file holds, in any of the shapes the benchmarks wrote."""
    commit = payload.get("commit")
    if commit is None and isinstance(payload.get("config"), dict):  # site_conditioned before bench/_common.py
        commit = payload["config"].get("commit")
    if isinstance(commit, str):  # pacs_loop before bench/_common.py: the sha and the flag side by side
        return [(commit, payload.get("dirty"))]
    if not isinstance(commit, dict):
        return []
    if str(commit.get("sha")).startswith("mixed"):  # merged folds: each method lists its runs
        return [(run.get("commit"), run.get("dirty")) for method in payload.get("methods", {}).values() for run in method.get("runs", [])]
    return [(commit.get("sha"), commit.get("dirty"))]


def test_there_are_results_files_to_check():
    assert len(FILES) >= 10, f"expected the committed results files under {RESULTS}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_results_file_names_the_code_it_ran_on(path: Path):
    payload = json.loads(path.read_text())
    runs = recorded_runs(payload)
    assert runs, f"{path.name} records no commit: rerun its benchmark (bench/_common.begin records one)"
    for sha, dirty in runs:
        assert isinstance(sha, str) and SHA.match(sha), f"{path.name}: commit {sha!r} is not a git commit id"
        assert isinstance(dirty, bool), f"{path.name}: run of {sha} does not say whether its tree was clean"
    if any(dirty for _, dirty in runs):
        assert payload.get("provenance"), f"{path.name} ran on a dirty tree and does not say what differed: add a 'provenance' field"


def test_recorded_runs_reads_every_shape():
    sha = "0" * 40
    assert recorded_runs({"commit": {"sha": sha, "dirty": False}}) == [(sha, False)]
    assert recorded_runs({"commit": sha, "dirty": True}) == [(sha, True)]
    assert recorded_runs({"config": {"commit": {"sha": sha, "dirty": False}}}) == [(sha, False)]
    merged = {"commit": {"sha": "mixed: see each method's runs", "dirty": False}, "methods": {"a": {"runs": [{"commit": sha, "dirty": False}, {"commit": "1" * 40, "dirty": True}]}}}
    assert recorded_runs(merged) == [(sha, False), ("1" * 40, True)]
    assert recorded_runs({"what": "no commit"}) == []


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="busy_processes reads Linux's /proc")
def test_a_run_names_the_processes_that_keep_a_cpu_busy_beside_it():
    """A results file lists the processes that kept a CPU busy when the run began (two trainings at once on two CPUs
    took about six times as long each, and the load average does not say which process), and the run says so in one
    line; a process that sleeps is not listed."""
    import subprocess
    import sys
    import time

    from monai_cir.provenance import busy_processes, busy_warning

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    quiet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        found = busy_processes(window_s=0.5)
    finally:
        for process in (busy, quiet):
            process.kill()
            process.wait()
    by_pid = {entry["pid"]: entry for entry in found}
    assert busy.pid in by_pid and quiet.pid not in by_pid, found
    assert by_pid[busy.pid]["cpu_share"] > 0.4 and "while True: pass" in by_pid[busy.pid]["command"]
    line = busy_warning({"busy_processes": [by_pid[busy.pid]], "cpu_count": 2})
    assert f"pid {busy.pid}" in line and "while True: pass" in line
    assert busy_warning({"busy_processes": [], "cpu_count": 2}) is None
