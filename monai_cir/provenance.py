"""Where a number came from: the machine and the commit, written into every results file."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["busy_processes", "busy_warning", "machine_info", "git_commit"]

_REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU model, cores, memory, load, Python/torch versions and the CUDA device (None on CPU)."""
    import torch

    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    busy = busy_processes()
    if busy is not None:
        info["busy_processes"] = busy
    info.update(extra)
    return info


def busy_processes(window_s: float = 0.25, min_share: float = 0.25) -> list[dict[str, Any]] | None:
    """Other processes that keep at least ``min_share`` of a CPU busy, sampled over ``window_s`` seconds now:
    ``[{"pid", "cpu_share", "command"}]``, busiest first (None where there is no Linux ``/proc``). A run's timings,
    and training on two CPUs, slow many-fold beside another CPU-bound process (two trainings at once took about six
    times as long each), which the load average written before a run does not name."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        return None
    own = os.getpid()

    def cpu_ticks() -> dict[int, int]:
        ticks = {}
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == own:
                continue
            try:  # /proc/PID/stat: the fields after the command's closing parenthesis; utime and stime are the 12th and 13th
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):  # a process that ended meanwhile
                continue
        return ticks

    per_second = os.sysconf("SC_CLK_TCK")
    before, start = cpu_ticks(), time.perf_counter()
    time.sleep(window_s)
    after, elapsed = cpu_ticks(), time.perf_counter() - start
    busy = []
    for pid, ticks in after.items():
        share = (ticks - before.get(pid, ticks)) / per_second / elapsed
        if share >= min_share:
            try:
                command = (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                command = "?"
            busy.append({"pid": pid, "cpu_share": round(share, 2), "command": command[:160]})
    return sorted(busy, key=lambda b: -b["cpu_share"])


def git_commit() -> dict[str, Any]:
    """``{"sha": ..., "dirty": ...}`` of the checkout (tracked files only), ``None`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO, capture_output=True, text=True, check=False
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty}


def busy_warning(info: dict[str, Any]) -> str | None:
    """One line naming the busy processes of a :func:`machine_info`, for a run to print before it starts; None when
    there are none."""
    busy = info.get("busy_processes") or []
    if not busy:
        return None
    named = "; ".join(f"{b['command'] or '?'} (pid {b['pid']}, {b['cpu_share']:.0%} of a CPU)" for b in busy[:3])
    return (f"{len(busy)} other process(es) keep a CPU busy: {named}. Timings measured now, and training on this machine's "
            f"{info.get('cpu_count')} CPU(s), will be slower than on a quiet machine (the results file lists them under "
            "machine.busy_processes)")
