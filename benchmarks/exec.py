"""How many execs per second the agent follows: ``python -m benchmarks.exec``.

Starts the real agent daemon (exec monitor only, its own pins, spool and socket in a
throw-away directory), runs ``--workers`` bash loops that exec a copy of /bin/true as
fast as they can for ``--seconds``, then stops the agent and counts that binary's exec
events in its spool. Prints execs issued and spooled per second, events lost (issued
minus spooled: ring-buffer overflow or anything else), the agent's CPU share over the
burst and its peak RSS through :func:`benchmarks.figures.report` (a table, then one JSON
line). Needs root.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from aegis_agent.bpf.bpffs import BPFFS
from aegis_agent.bpf.monitors import ExecMonitor
from aegis_agent.control import ControlError, call
from aegis_agent.spool import Spool

from .figures import report

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(seconds: float, workers: int) -> dict[str, float | int]:
    name = f"aegis-bench-{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    pin = BPFFS / name
    sock = root / "agent.sock"
    cfg = {"monitors": {"exec": True, "connect": False, "pin_dir": str(pin)},
           "spool": {"dir": str(root / "spool"), "max_bytes": 1 << 30},
           "control": {"socket": str(sock)},
           "watchdog": {"max_cpu_percent": 100, "grace": 1000}}
    (root / "agent.yaml").write_text(yaml.safe_dump(cfg))
    exe = root / "bench-true"
    shutil.copy("/bin/true", exe)
    agent = subprocess.Popen([sys.executable, "-m", "aegis_agent", "--config",
                              str(root / "agent.yaml"), "run"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                call(sock, "ping")
                break
            except ControlError:
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise SystemExit("the agent did not start") from None
                time.sleep(0.1)
        peak = [_rss_mb(agent.pid)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak.append(_rss_mb(agent.pid))

        threading.Thread(target=sample, daemon=True).start()
        loop = (f'n=0; while [ $SECONDS -lt {int(seconds)} ]; do "$0"; n=$((n+1)); done; '
                'echo $n')
        cpu0, t0 = _cpu_s(agent.pid), time.monotonic()
        procs = [subprocess.Popen(["bash", "-c", loop, str(exe)], stdout=subprocess.PIPE,
                                  text=True) for _ in range(workers)]
        issued = sum(int(p.communicate()[0]) for p in procs)
        wall = time.monotonic() - t0
        time.sleep(1.0)  # let the agent drain what is still in the ring buffer
        cpu1 = _cpu_s(agent.pid)
        done.set()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        spooled = sum(1 for _s, e in Spool(root / "spool").read(-1, 1 << 30)
                      if e.kind == "exec" and e.data.get("filename") == str(exe))
        return {"seconds": round(wall, 2), "workers": workers, "execs_issued": issued,
                "execs_per_s": round(issued / wall), "events_spooled": spooled,
                "events_per_s": round(spooled / wall), "events_lost": issued - spooled,
                "agent_cpu_percent": round(100 * (cpu1 - cpu0) / (wall + 1.0), 1),
                "agent_peak_rss_mb": round(max(peak), 1)}
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        ExecMonitor(pin).stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = p.parse_args(argv)
    if args.seconds < 1 or args.workers < 1:
        p.error("--seconds must be >= 1 and --workers >= 1")
    r = run(args.seconds, args.workers)
    report("exec", {k: v for k, v in r.items() if k not in ("seconds", "workers")},
           title=f"agent exec monitor: {r['workers']} workers exec'ing for {r['seconds']} s",
           targets={"events_lost": "0"},
           notes={"seconds": r["seconds"], "workers": r["workers"],
                  "agent_cpu": "percent of one core over burst + drain"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
