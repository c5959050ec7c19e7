"""Shared fixtures. Every host object a test run creates carries the run prefix
(``AEGIS_TEST_PREFIX`` or a fresh ``at<hex>``); the session fails if any is left.

An interrupted run tears down too: SIGTERM (a CI timeout) ends the run the way Ctrl-C
does, so pytest's session teardown runs the fixtures' finalizers; once the run is
interrupted, further SIGINT/SIGTERM are ignored so a second Ctrl-C cannot cut a fleet's
teardown short; and the leftover check runs after that teardown, not before it."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness_secrets import tmpfs
from harness_vault import PgAdmin, Wiring, make_pg_admin, wire
from lane import Command, Job, Lane, LaneOutcome, result_shown

from aegis_lab.cleanup import leftovers
from aegis_lab.ee import EEImage
from aegis_lab.fleet import LocalFleet
from aegis_lab.naming import new_prefix
from aegis_lab.podman import podman_env
from harness import PATHS, NetnsPair, OpenBao, local_fleet, netns_pair, openbao_dev
from harness_controller import Server, controller_server
from harness_ee import build_ee
from harness_pg import PgServer, postgres_server

# The collection's plugins import as ansible_collections.aegis.fleet.* (this source tree).
sys.path.insert(0, str(PATHS.collections))

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_PREFIX = os.environ.get("AEGIS_TEST_PREFIX") or new_prefix()
#: a child run in the lane (below) shares the run's prefix and draws its sub-prefixes
#: from a range of its own
_suffixes = itertools.count(int(os.environ.get("AEGIS_TEST_SUFFIX_START", "0")))
_CHILD = os.environ.get("AEGIS_TEST_CHILD") == "1"
_MADE: list[str] = []


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def sub_prefix() -> str:
    """A fresh prefix inside this run's prefix (run prefix + two characters, so no
    sub-prefix is a prefix of another and a sweep of one never touches a sibling)."""
    n = next(_suffixes)
    if n >= len(_DIGITS) ** 2:
        raise RuntimeError(f"more than {len(_DIGITS) ** 2} sub-prefixes in one run")
    made = RUN_PREFIX + _DIGITS[n // len(_DIGITS)] + _DIGITS[n % len(_DIGITS)]
    _MADE.append(made)
    return made


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """Each test starts with the run's umask: a test calling the controller's CLI
    in-process gets its ``umask(0o077)`` (right for the daemon), which would otherwise stay
    for every later test and make the directories they share with other users 0700 (CI:
    the EE's user could not read the fleet's known_hosts)."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return RUN_PREFIX


@pytest.fixture(scope="session")
def fleet() -> Iterator[LocalFleet]:
    """A 2-node local fleet shared by the session; destroyed at the end, even on failure.
    Its nodes are ``admin`` (SYS_ADMIN): the modules under test validate rulesets in a
    scratch netns and sandbox units."""
    with local_fleet(sub_prefix(), 2, caps="admin") as f:
        yield f


# -- the background lane (tests/lane.py) ------------------------------------------------
LANE = Lane(PATHS.state_root / "lane" / RUN_PREFIX)


def ee_job() -> Job:
    return Job("ee", build_ee, order=10)


#: session fixtures whose value is a lane job
FIXTURE_JOBS = {"execution_environment": ee_job}

#: test modules that run whole in a child pytest in the lane (-> the job's lane order): each
#: makes what it needs itself (its own fleet; the benchmarks their own OpenBao, PostgreSQL
#: and namespaces) and uses no session fixture; their tests in this run wait for the
#: child's verdicts
LANE_MODULES = {"tests/e2e/test_harden.py": 65, "tests/integration/test_benchmarks_run.py": 66,
                "tests/e2e/test_secrets_fleet.py": 67, "tests/e2e/test_agent_fleet.py": 68,
                "tests/integration/test_controller_fuzz.py": 69,
                "tests/integration/test_agent_daemon.py": 70,
                "tests/integration/test_recovery_steps.py": 71,
                "tests/integration/test_ledger_cli.py": 72,
                "tests/e2e/test_local_fleet.py": 73,
                "tests/integration/test_segment_lockout.py": 74}
CHILD_SUFFIXES = 1100  # the child's sub-prefixes: RUN_PREFIX + (1100..1295 in base 36)


def _child_run(module: object, items: list[pytest.Item]) -> tuple[Job, list[pytest.Item]]:
    """The lane job that runs ``items`` of ``module`` in a child pytest, and the items
    that stand for them here."""
    rel = Path(str(module.__file__)).relative_to(REPO_ROOT)
    key = f"pytest:{rel.stem}"
    xml = LANE.log_dir / f"{rel.stem}.xml"
    suffixes = CHILD_SUFFIXES + 16 * list(LANE_MODULES).index(str(rel))  # one range a child
    env = dict(os.environ, AEGIS_TEST_PREFIX=RUN_PREFIX, AEGIS_TEST_LANE="0",
               AEGIS_TEST_CHILD="1", AEGIS_TEST_SUFFIX_START=str(suffixes))
    cmd = Command([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
                   f"--junitxml={xml}", *[i.nodeid for i in items]],
                  cwd=REPO_ROOT, env=env, timeout=2400, grace=300)
    stand_ins = [LaneOutcome.from_parent(i.parent, name=i.name, lane=LANE, key=key, xml=xml)
                 for i in items]
    for old, new in zip(items, stand_ins, strict=True):
        new.own_markers = list(old.own_markers)
    return Job(key, cmd.run, order=LANE_MODULES[str(rel)], cancel=cmd.cancel), stand_ins


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: these are the items that run
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Queue the lane's jobs for the selected items, and move every module that waits for
    one to the end of the run (in the lane's order), so the jobs run while the other tests
    do. A test module adds jobs with a ``lane_jobs(items) -> list[Job]`` function."""
    if os.environ.get("AEGIS_TEST_LANE", "1") == "0" or config.option.collectonly:
        return
    jobs: dict[str, Job] = {}
    waits: dict[object, int] = {}  # module -> the lane order of the first job it waits for
    by_module: dict[object, list[pytest.Item]] = {}
    for item in items:
        by_module.setdefault(item.module, []).append(item)
    for module, mod_items in list(by_module.items()):
        if str(Path(str(module.__file__)).relative_to(REPO_ROOT)) in LANE_MODULES:
            job, stand_ins = _child_run(module, mod_items)
            jobs[job.key] = job
            waits[module] = job.order
            by_module[module] = stand_ins
            continue
        names = {n for i in mod_items for n in i.fixturenames}
        made = [make() for name, make in FIXTURE_JOBS.items() if name in names]
        hook = getattr(module, "lane_jobs", None)
        made += hook(mod_items) if hook else []
        for job in made:
            jobs.setdefault(job.key, job)
        if made:
            waits[module] = min(jobs[job.key].order for job in made)
    if not jobs:
        return
    items[:] = ([i for i in items if i.module not in waits]
                + [i for m in sorted(waits, key=waits.__getitem__) for i in by_module[m]])
    config.stash[_LANE_JOBS] = list(jobs.values())


_LANE_JOBS = pytest.StashKey[list[Job]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    LANE.start(session.config.stash.get(_LANE_JOBS, []))


@pytest.fixture(scope="session")
def lane(pytestconfig: pytest.Config):
    """``lane(key, make)``: the lane job's result (its progress shown past pytest's output
    capture while the test waits), or ``make()``'s job run here if the lane has none."""
    def result(key: str, make):
        return result_shown(LANE, pytestconfig, key, make)
    return result


@pytest.fixture(scope="session")
def execution_environment(lane) -> EEImage:
    """The EE of this checkout, built or reused once per session (a cold build takes
    minutes: it runs in the background lane from the start of the run)."""
    return lane("ee", ee_job)


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's podman settings in this process's environment: ansible-runner starts
    ``podman run`` with it (and puts only the run's own variables into the container)."""
    lab = podman_env({})
    for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"):
        monkeypatch.setenv(key, lab[key])


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    with netns_pair(sub_prefix()) as pair:
        yield pair


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    with openbao_dev(sub_prefix()) as server:
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for this run (Debian's binaries, loopback only)."""
    with postgres_server(sub_prefix()) as server:
        yield server


@pytest.fixture(scope="session")
def pg_admin(pg_server: PgServer) -> PgAdmin:
    """A PostgreSQL login for Vault's database engine (CREATEROLE, pg_signal_backend)."""
    return make_pg_admin(pg_server)


@pytest.fixture(scope="session")
def vault_wiring(openbao: OpenBao, pg_admin: PgAdmin,
                 tmp_path_factory: pytest.TempPathFactory) -> Wiring:
    """The fleet's Vault wiring (role aegis.fleet.vault, once per run) with TTLs of a few
    seconds, so renewal and expiry happen within a test: node token 6 s (max 90 s),
    database leases 6 s (max 90 s)."""
    return wire(openbao, pg_admin, tmp_path_factory.mktemp("vault-wiring"),
                token_ttl="6s", token_max_ttl="90s",  # noqa: S106 - durations
                db_ttl="6s", db_max_ttl="90s")


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs mounted under the test's tmp dir, as the agent's secret sink wants its
    directory (mode 0711, noexec, nosuid, nodev); always unmounted."""
    with tmpfs(tmp_path / "tmpfs") as d:
        yield d


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh database of its own for one test (dropped afterwards)."""
    with pg_server.database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A real controller (`aegis-controller serve`, mutual TLS) on SQLite, then on the run's
    PostgreSQL."""
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    with controller_server(sub_prefix(), pg) as srv:
        yield srv


def pytest_report_header(config: pytest.Config) -> str:
    return f"aegis test prefix: {RUN_PREFIX}"


_RUN_PID = os.getpid()


def _interrupt(signum: int, _frame: object) -> None:
    if os.getpid() != _RUN_PID:  # a fork of the run (pyroute2 forks for netns): just end
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


_STARTED = time.monotonic()


def pytest_sessionstart(session: pytest.Session) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the run's time went, for keeping the suite inside its budget: the slowest
    test modules of this lane (setup, call and teardown of their tests summed) and each
    background-lane job's start and length, next to when this lane ended."""
    if _CHILD:
        return
    per_module: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                module = report.nodeid.split("::", 1)[0]
                per_module[module] = per_module.get(module, 0.0) + report.duration
    if not per_module:
        return
    write = terminalreporter.write_line
    terminalreporter.section("time per module (slowest 25)")
    for module, seconds in sorted(per_module.items(), key=lambda kv: -kv[1])[:25]:
        write(f"{seconds:8.1f}s  {module}")
    jobs = [j for j in LANE.jobs.values() if j.started is not None]
    if jobs:
        terminalreporter.section("background lane")
        for job in sorted(jobs, key=lambda j: j.started or 0.0):
            start = (job.started or 0.0) - _STARTED
            length = "running" if job.seconds is None else f"{job.seconds:.0f} s"
            write(f"  +{start:6.0f} s  {job.key}: {length}")
        ends = [(j.started or 0.0) + j.seconds - _STARTED for j in jobs if j.seconds]
        write(f"  lane's last job ended at +{max(ends, default=0.0):.0f} s; "
              f"this lane ended at +{time.monotonic() - _STARTED:.0f} s")


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """The run is ending: let the teardown that follows run to its end. Ignored signals
    stay ignored in the lab's Python children (``aegis-lab node destroy``)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    print(f"\naegis: interrupted; removing what test run {RUN_PREFIX} made before exiting "
          "(further interrupts are ignored until then)", file=sys.stderr)


@pytest.hookimpl(trylast=True)  # after pytest's own hook has torn the session's fixtures down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    LANE.stop()
    # a child run checks what it made; the run checks everything of its prefix
    left = [x for p in (_MADE if _CHILD else [RUN_PREFIX]) for x in leftovers(p)]
    if left:
        print(f"\naegis: test run {RUN_PREFIX} left host objects behind:", file=sys.stderr)
        for item in left:
            print(f"  {item}", file=sys.stderr)
        session.exitstatus = 1
