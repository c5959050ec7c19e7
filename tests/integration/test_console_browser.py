"""The operator console in a real headless Chromium (Debian's ``chromium``, driven by
Playwright; the browser presents the operator's client certificate for mutual TLS and
trusts nothing but what the test names): the fleet with each node's state, a suspect
node's reason, approving an access request and a held recovery job (which moves back to
queued), a change in the controller showing on an open page by itself (live updates),
and "verify now" on a tampered copy of the controller naming the first bad record. A
screenshot of each page is written under the test's tmp dir (paths printed)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from harness_console import SUSPECT_REASON, domain, populate

from aegis_controller.ledger.store import records_table
from aegis_controller.nodes import NodeState
from aegis_controller.trust import transition
from conftest import sub_prefix
from harness_controller import (
    Server,
    attest,
    controller_server,
    trusted_node,
)

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def console_server() -> Iterator[Server]:
    with controller_server(sub_prefix(), None) as srv:
        yield srv


def _shot(page: object, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    print(f"console screenshot: {path}")


def _context(browser: object, server: Server, name: str) -> object:
    ops = server.state / "ops"
    return browser.new_context(  # type: ignore[attr-defined]
        ignore_https_errors=False,
        client_certificates=[{"origin": server.url,
                              "certPath": str(ops / f"operator-{name}.pem"),
                              "keyPath": str(ops / f"operator-{name}.key")}])


def _tampered_copy(server: Server) -> Server:
    """A copy of ``server``'s state (database, keys, anchor) with one ledger record
    edited in place: the state change that made web2 suspect. Not started."""
    state = Path(tempfile.mkdtemp(prefix=f"{sub_prefix()}-ctl-"))
    shutil.copytree(server.state, state, dirs_exist_ok=True)
    copy = Server(state, None)
    t = records_table.c
    engine = copy.engine()
    with engine.begin() as conn:
        seq = conn.execute(sa.select(t.seq).where(
            t.subject == "web2", t.body.contains("suspect")).order_by(t.seq)).scalars().first()
        assert seq is not None
        conn.execute(records_table.update().where(t.seq == seq).values(
            body=sa.func.replace(t.body, "suspect", "trusted")))
    engine.dispose()
    copy.tampered_seq = seq  # type: ignore[attr-defined]
    return copy


def _drifted_node(server: Server, tmp_path: Path) -> str:
    """web5 enrolls and attests for real (trusted against its profile), then a golden file
    changes and its next attestation makes it suspect; the verdict's reason."""
    root = tmp_path / "web5"
    node = trusted_node(server, "web5", root)
    (root / "etc/aegis.conf").write_text("changed\n")
    verdict = attest(server, node, root)
    assert verdict["state"] == "suspect", verdict
    return str(verdict["reason"])


def test_console_in_chromium(console_server: Server, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: ./scripts/bootstrap.sh installs it")
    server = console_server
    # Playwright presents the client certificate from its driver (Node.js), which checks
    # the controller's certificate against Node's CAs plus this file: the controller's CA
    # (the copy below has the same CA)
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(server.state / "ca" / "ca.pem"))
    ids = populate(domain(server))
    drifted = _drifted_node(server, tmp_path)
    out = server.ctl("operator-cert", "carol", "--approve", "--group", "sec",
                     "--out", str(server.state / "ops"))
    assert out.returncode == 0, out.stderr
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = _context(browser, server, "carol").new_page()
            page.goto(f"{server.url}/console/fleet")
            assert page.locator("#nodes").count() == 1, page.content()[:2000]
            rows = page.locator("#nodes tr[data-node]")
            states = {rows.nth(i).get_attribute("data-node"):
                      rows.nth(i).locator(".state").inner_text() for i in range(rows.count())}
            assert states == {"web1": "trusted", "web2": "suspect", "web3": "quarantined",
                              "web5": "suspect"}
            _shot(page, shots, "fleet")

            page.click("text=web5")  # suspect by a real attestation: the file is named
            assert page.locator("#reason").inner_text() == drifted
            assert "/etc/aegis.conf" in drifted
            assert "mismatches: golden /etc/aegis.conf" in page.locator("#history").inner_text()
            _shot(page, shots, "node-web5")
            page.goto(f"{server.url}/console/fleet")

            page.click("text=web2")
            assert page.locator("#reason").inner_text() == SUSPECT_REASON
            _shot(page, shots, "node-web2")

            page.goto(f"{server.url}/console/incidents")
            assert page.locator("#incidents tr").count() == 2  # header + the one incident
            _shot(page, shots, "incidents")

            page.goto(f"{server.url}/console/access")
            pending = page.locator(f"#pending tr[data-request='{ids['request']}']")
            _shot(page, shots, "access-pending")
            pending.locator("button", has_text="Approve").click()
            page.wait_for_url("**/console/access")
            assert page.locator(f"#pending tr[data-request='{ids['request']}']").count() == 0
            assert page.locator(f"#live tr[data-request='{ids['request']}']").count() == 1
            _shot(page, shots, "access-granted")

            page.goto(f"{server.url}/console/recovery")
            job = page.locator(f"#jobs tr[data-job='{ids['job']}']")
            assert job.locator(".job-state").inner_text() == "awaiting-approval"
            _shot(page, shots, "recovery-held")
            job.locator("button", has_text="Approve").click()
            page.wait_for_url("**/console/recovery")
            job = page.locator(f"#jobs tr[data-job='{ids['job']}']")
            assert job.locator(".job-state").inner_text() == "queued"
            _shot(page, shots, "recovery-approved")
            page.goto(f"{server.url}/console/fleet")
            # live: web1 turns suspect in the controller; the open page shows it by itself
            # (live.js fetches the page again every 10 s; no reload here)
            domain(server).nodes.move("web1", transition(
                NodeState.TRUSTED, NodeState.SUSPECT, "live update check"), "test")
            # (a locator's wait: the page's CSP refuses Playwright's string evaluation)
            page.locator('#nodes tr[data-node="web1"] .state').filter(
                has_text="suspect").wait_for(timeout=30_000)
            assert page.locator("main[data-updated]").count() == 1

            page.goto(f"{server.url}/console/policies")
            assert page.locator("#flow line").count() == 2  # developer -> db, db-ssh
            _shot(page, shots, "policies")

            page.goto(f"{server.url}/console/ledger")
            page.click("#verify")
            assert "Intact" in page.locator("#result").inner_text()
            _shot(page, shots, "ledger-intact")
        finally:
            browser.close()

        server.kill()  # a copy of its state, tampered, served by a second controller
        copy = _tampered_copy(server)
        try:
            copy.start()
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                page = _context(browser, copy, "carol").new_page()
                page.goto(f"{copy.url}/console/ledger")
                page.click("#verify")
                result = page.locator("#result").inner_text()
                seq = copy.tampered_seq  # type: ignore[attr-defined]
                assert f"edited at record {seq}" in result, result
                assert f"First bad record: seq {seq}, state_change of web2" in result
                _shot(page, shots, "ledger-tampered")
            finally:
                browser.close()
        finally:
            if copy.proc is not None:
                copy.kill()
            shutil.rmtree(copy.state, ignore_errors=True)
    print(f"console screenshots in {shots}")
