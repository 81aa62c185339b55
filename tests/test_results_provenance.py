"""Each results file names the code and the command it ran (issue 15, "every number has its source"): each
``bench/results/*.json`` records the git commit it ran on (a commit of this history) and whether the tree was clean, and
the command that reruns it; a file merged from several runs (``monai-cir evaluate --folds F --out`` one fold at a time)
names each run's commit; a file written on a dirty tree says what differed, in a ``provenance`` field. That the docs
quote these files' figures faithfully is checked by review (figures in prose cannot be matched to keys mechanically)."""

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


# files written before their writer recorded its command (monai-cir evaluate, until c0da4fa; the lent GPU's parity run;
# site_conditioned before bench/_common.py): listed by name, so that the list only shrinks as they are rerun
WITHOUT_COMMAND = {
    "cuda_parity_h200.json", "derm7pt_cv_512px.json", "derm7pt_cv_composed_ensemble2.json", "derm7pt_cv_composed_finetuned.json",
    "derm7pt_cv_composed_finetuned_1epoch.json", "derm7pt_cv_composed_finetuned_6ep.json", "derm7pt_cv_composed_finetuned_6ep_frozen_bn.json",
    "derm7pt_cv_composed_finetuned_gpu_10ep_frozen_bn.json", "derm7pt_cv_composed_finetuned_gpu_fold0.json",
    "derm7pt_cv_composed_finetuned_late_fusion_6ep.json", "derm7pt_cv_composed_finetuned_late_fusion_gpu_6ep.json",
    "derm7pt_cv_composed_finetuned_late_fusion_text_forms_fold0.json", "derm7pt_cv_composed_fullbatch.json",
    "derm7pt_cv_composed_late_fusion_seed1000.json", "derm7pt_cv_composed_seed1000.json", "derm7pt_cv_finetuned_prior.json",
    "derm7pt_cv_issue13.json", "derm7pt_cv_no_tta.json", "derm7pt_cv_release_ensemble2.json", "derm7pt_cv_reworded_read.json",
    "derm7pt_cv_text_weight_seed1000.json", "site_conditioned.json",
}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_results_file_names_the_command_that_reruns_it(path: Path):
    """Found by review: every monai-cir evaluate file (derm7pt_cv.json, the README's table, included) recorded no command."""
    command = json.loads(path.read_text()).get("command")
    if path.name in WITHOUT_COMMAND:
        assert not command, f"{path.name} records its command now: take it off WITHOUT_COMMAND"
    else:
        assert isinstance(command, str) and command.strip(), f"{path.name} records no command: rerun it with a writer that records one"


def test_results_files_ran_on_commits_of_this_history():
    """A recorded commit is one of this checkout's history (not a commit of a lent machine's copy, or mistyped)."""
    import subprocess

    root = RESULTS.parent.parent
    shallow = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True)
    assert shallow.returncode == 0, f"the tests run in a git checkout of the project: {shallow.stderr.strip()}"
    for path in FILES:
        for sha, _ in recorded_runs(json.loads(path.read_text())):
            if shallow.stdout.strip() == "true" and subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True).returncode:
                continue  # a shallow clone does not hold the older commits: only those it holds are checked
            known = subprocess.run(["git", "-C", str(root), "merge-base", "--is-ancestor", str(sha), "HEAD"], capture_output=True)
            assert known.returncode == 0, f"{path.name}: commit {sha} is not in this checkout's history"


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
