"""SIGTERM during a benchmark (a CI timeout, ``kill``): the benchmark's own process unwinds,
so its context managers stop what it started (servers, namespaces, mounts); a fork of it
ends at once instead. pyroute2 forks to create a network namespace and stops that child
with SIGTERM: a child that unwound would run the parent's teardown from its copy of the
stack and remove the namespaces the benchmark is still using (the access benchmark failed
so, now and then, with "No such file or directory: /var/run/netns/...").

    exit_on_sigterm()   # first thing in main()
"""

from __future__ import annotations

import os
import signal
import sys


def exit_on_sigterm() -> None:
    main = os.getpid()

    def stop(signum: int, _frame: object) -> None:
        if os.getpid() != main:  # a fork: end here, never run the parent's teardown
            os._exit(128 + signum)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
