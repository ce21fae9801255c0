"""The console page's link model, piece by piece: a peek spends nothing, the socket's first
frame is parsed strictly and waited for only so long, passes are kept as digests on disk
across a restart and expire, and frame_ancestors reaches the pages' CSP."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from broker.access.pages import PASSES_FILE, PagePasses
from broker.access.tokens import MemoryTokenStore, Tokens
from broker.config import ConfigError, load_settings
from broker.errors import SESSION_ENDED, SESSION_KILLED, TOKEN_MISSING, TOKEN_USED, BrokerError
from broker.model import ConsoleKind, ConsoleRef, LinkMode
from broker.web.pageauth import Credential, PageLeft, parse_first_frame, read_credential
from unit_support import FakeClock, page_socket, run_async, session_of

UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
VNC = "<graphics type='vnc' port='5900' listen='127.0.0.1'/>"


def minted(clock: FakeClock, **kwargs: Any) -> tuple[Tokens, str]:
    tokens = Tokens(MemoryTokenStore(), clock=clock)
    ref = ConsoleRef(UUID, 0, run_id=7, kind=kwargs.pop("kind", ConsoleKind.VNC))
    return tokens, tokens.mint(ref, "web-1", 60, **kwargs).token


# -- peek -------------------------------------------------------------------------------


def test_a_peek_does_not_spend_the_link(clock: FakeClock) -> None:
    tokens, token = minted(clock)
    for _ in range(3):
        assert tokens.peek(token).name == "web-1"
    assert tokens.redeem(token).console.run_id == 7
    with pytest.raises(BrokerError) as used:
        tokens.peek(token)
    assert used.value.failure is TOKEN_USED


# -- the first frame --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "websocket.receive", "text": '{"token": "abc"}'}, Credential(token="abc")),
        ({"type": "websocket.receive", "text": '{"pass": "xyz"}'}, Credential(pass_id="xyz")),
    ],
)
def test_the_first_frame_names_a_token_or_a_pass(message: dict[str, Any], expected: Credential) -> None:
    assert parse_first_frame(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.receive", "bytes": b'{"token": "abc"}'},  # binary: RFB bytes, not a credential
        {"type": "websocket.receive", "text": "token=abc"},
        {"type": "websocket.receive", "text": '["abc"]'},
        {"type": "websocket.receive", "text": '{"token": "abc", "pass": "xyz"}'},
        {"type": "websocket.receive", "text": '{"cookie": "abc"}'},
        {"type": "websocket.receive", "text": '{"token": 7}'},
        {"type": "websocket.receive", "text": '{"token": ""}'},
        {"type": "websocket.receive", "text": json.dumps({"token": "a" * 600})},
    ],
)
def test_anything_else_first_is_refused_with_4100(message: dict[str, Any]) -> None:
    with pytest.raises(BrokerError) as refused:
        parse_first_frame(message)
    assert refused.value.failure is TOKEN_MISSING and '{"token": …}' in refused.value.message


class Silent:
    """A socket whose page never sends anything (or leaves)."""

    def __init__(self, leaves: bool = False) -> None:
        self.leaves = leaves

    async def receive(self) -> dict[str, Any]:
        if self.leaves:
            return {"type": "websocket.disconnect", "code": 1001}
        await asyncio.sleep(60)
        raise AssertionError("unreachable")


def test_a_page_that_says_nothing_is_refused_after_the_deadline() -> None:
    with pytest.raises(BrokerError) as refused:
        run_async(read_credential(Silent(), timeout=0.05))  # type: ignore[arg-type]
    assert refused.value.failure is TOKEN_MISSING
    assert refused.value.message == "The console page sent no link token or session pass within 0.05 s."
    with pytest.raises(PageLeft):
        run_async(read_credential(Silent(leaves=True), timeout=1))  # type: ignore[arg-type]


# -- passes -----------------------------------------------------------------------------


def test_passes_survive_a_restart_as_digests_and_expire(tmp_path: Path, clock: FakeClock) -> None:
    tokens, token = minted(
        clock, kind=ConsoleKind.SERIAL, mode=LinkMode.VIEW_ONLY, may_take_over=True, device="serial0"
    )
    path = tmp_path / PASSES_FILE
    passes = PagePasses(window=100, clock=clock, path=path)
    pass_id, grant = passes.open(tokens.redeem(token))
    assert grant.console.run_id is None  # any run of the domain: the page waits through a restart
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pass_id not in path.read_text() and token not in path.read_text()

    restarted = PagePasses(window=100, clock=clock, path=path)
    assert restarted.check(pass_id, UUID) == grant
    with pytest.raises(BrokerError) as other:
        restarted.check(pass_id, "00000000-0000-4000-8000-000000000000")
    assert other.value.failure is SESSION_ENDED
    clock.advance(100)
    with pytest.raises(BrokerError) as expired:
        restarted.check(pass_id, UUID)
    assert expired.value.message == "This console session has expired; ask for a new console link."
    assert len(PagePasses(window=100, clock=clock, path=path)) == 0  # purged when read back


def test_a_killed_pass_stays_killed_after_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    tokens, token = minted(clock)
    path = tmp_path / PASSES_FILE
    passes = PagePasses(clock=clock, path=path)
    pass_id, _ = passes.open(tokens.redeem(token))
    from broker.access.tokens import digest_of

    passes.end(digest_of(pass_id))
    with pytest.raises(BrokerError) as killed:
        PagePasses(clock=clock, path=path).check(pass_id, UUID)
    assert killed.value.failure is SESSION_KILLED


def test_a_pass_ends_with_the_domains_undefine_only(tmp_path: Path, clock: FakeClock) -> None:
    tokens, token = minted(clock)
    passes = PagePasses(clock=clock, path=tmp_path / PASSES_FILE)
    pass_id, _ = passes.open(tokens.redeem(token))
    assert passes.end_for(UUID) == 1
    with pytest.raises(BrokerError) as gone:
        PagePasses(clock=clock, path=tmp_path / PASSES_FILE).check(pass_id, UUID)
    assert "removed" in gone.value.message


@pytest.mark.parametrize("content", ["not json", '{"format": 99, "passes": {}}', '{"format": 1, "passes": []}'])
def test_a_spoilt_pass_file_is_ignored(tmp_path: Path, clock: FakeClock, content: str) -> None:
    path = tmp_path / PASSES_FILE
    path.write_text(content)
    path.chmod(0o600)
    assert len(PagePasses(clock=clock, path=path)) == 0


def test_a_pass_file_others_may_read_is_not_trusted(tmp_path: Path, clock: FakeClock) -> None:
    tokens, token = minted(clock)
    path = tmp_path / PASSES_FILE
    PagePasses(clock=clock, path=path).open(tokens.redeem(token))
    path.chmod(0o644)
    assert len(PagePasses(clock=clock, path=path)) == 0


# -- the page socket through the app ----------------------------------------------------


def end_from_the_vnc_side(ws: Any, vnc_server: Any) -> None:
    """As the other unit tests do: the server ends the session, so the TestClient's own
    exit does not cancel the app mid-relay."""
    vnc_server.drop_clients()
    with pytest.raises(WebSocketDisconnect):
        ws.receive_bytes()


def test_the_page_socket_spends_the_link_and_answers_with_a_session(api, define_domain, vnc_server) -> None:
    from unit_support import vnc_graphics

    domain = define_domain(vnc_graphics(vnc_server.port))
    token = api.token_for(domain)
    uuid = domain.UUIDString()
    assert api.client.get(f"/console?token={token}").status_code == 200  # not spent by that
    with page_socket(api.client, uuid, token=token) as ws:
        session = session_of(ws)
        assert ws.receive_bytes() == vnc_server.GREETING
        end_from_the_vnc_side(ws, vnc_server)
    assert session["domain"] == {"name": domain.name(), "uuid": uuid}
    assert (session["kind"], session["console"], session["mode"]) == ("vnc", "graphics 0", "interactive")
    assert 0 < session["expires_in"] <= 600  # the page times its window by this, not by its own clock
    with page_socket(api.client, uuid, **{"pass": session["pass"]}) as ws:
        assert session_of(ws)["pass"] == session["pass"]
        assert ws.receive_bytes() == vnc_server.GREETING
        end_from_the_vnc_side(ws, vnc_server)
    page = api.client.get(f"/console?token={token}")
    assert page.status_code == 401 and "already used" in page.text


def test_a_link_for_an_earlier_run_gives_no_pass(api, define_domain, vnc_server) -> None:
    """Had the STOPPED event been lost, the link of the run before must not turn into a
    pass (which names any run): 4104 before a session frame."""
    from dataclasses import replace

    from unit_support import vnc_graphics

    domain = define_domain(vnc_graphics(vnc_server.port))
    token = api.token_for(domain)
    store = api.broker.tokens.store._grants
    [(digest, grant)] = [(d, g) for d, g in store.items() if g.console.uuid == domain.UUIDString()]
    store[digest] = replace(grant, console=replace(grant.console, run_id=domain.ID() + 1000))
    with page_socket(api.client, domain.UUIDString(), token=token) as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 4104 and "restarted" in closed.value.reason
    assert len(api.broker.pages) == 0


def a_page_that_opened_its_console(api: Any, define_domain: Any, vnc_server: Any) -> tuple[Any, str]:
    """A domain whose console a page opened with its link, then closed: (domain, its pass)."""
    from unit_support import vnc_graphics

    domain = define_domain(vnc_graphics(vnc_server.port))
    with page_socket(api.client, domain.UUIDString(), token=api.token_for(domain)) as ws:
        pass_id = session_of(ws)["pass"]
        assert ws.receive_bytes() == vnc_server.GREETING
        end_from_the_vnc_side(ws, vnc_server)
    return domain, pass_id


def test_a_pass_for_a_domain_now_under_another_name_ends(api, define_domain, vnc_server) -> None:
    """The undefine event was missed (the broker was down) and the UUID came back under
    another name: not the VM the link was for."""
    from dataclasses import replace

    domain, pass_id = a_page_that_opened_its_console(api, define_domain, vnc_server)
    uuid = domain.UUIDString()
    passes = api.broker.pages._passes
    [digest] = list(passes)
    passes[digest] = replace(passes[digest], name="the-vm-it-was")
    for _attempt in range(2):  # and it stays ended
        with page_socket(api.client, uuid, **{"pass": pass_id}) as ws:
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
        assert closed.value.code == 4105 and "removed" in closed.value.reason


def test_a_page_waiting_for_its_vm_is_on_record_once(api, define_domain, vnc_server, caplog) -> None:
    """Its retries (every few seconds for the whole window) are not a refusal each in the
    log and the audit trail: the first is, until a console opens again."""
    import logging

    domain, pass_id = a_page_that_opened_its_console(api, define_domain, vnc_server)
    uuid = domain.UUIDString()
    domain.destroy()
    caplog.set_level(logging.DEBUG, logger="broker.app")
    for _retry in range(3):
        with page_socket(api.client, uuid, **{"pass": pass_id}) as ws:
            session_of(ws)
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_bytes()
        assert closed.value.code == 4201
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused console session")]
    assert [r.levelno for r in refusals] == [logging.INFO, logging.DEBUG, logging.DEBUG]


def test_a_pass_file_too_large_is_refused_whole_and_said_so(tmp_path: Path) -> None:
    from broker.state import read_private_file, write_private_file

    path = tmp_path / "big.json"
    write_private_file(path, "x" * 2000)
    with pytest.raises(OSError, match="larger than 1000 bytes"):
        read_private_file(path, limit=1000)
    assert read_private_file(path, limit=2000) == "x" * 2000


# -- frame_ancestors --------------------------------------------------------------------


def test_frame_ancestors_are_origins() -> None:
    settings = load_settings(environ={"BROKER_FRAME_ANCESTORS": "https://panel.example.com, http://10.0.0.5:8080/"})
    assert settings.frame_ancestors == ("https://panel.example.com", "http://10.0.0.5:8080")
    assert load_settings(environ={}).frame_ancestors == ()
    for bad in ["panel.example.com", "https://panel.example.com/app", "https://*.example.com", "'none'", "https://a b"]:
        with pytest.raises(ConfigError, match="frame_ancestors"):
            load_settings(environ={"BROKER_FRAME_ANCESTORS": bad})


def test_frame_ancestors_reach_the_pages_csp(make_api, define_domain) -> None:
    plain = make_api()
    page = plain.client.get(f"/console/{UUID}/")
    assert page.headers["content-security-policy"].endswith("frame-ancestors 'self'")
    assert page.headers["x-frame-options"] == "SAMEORIGIN"

    api = make_api(frame_ancestors=("https://panel.example.com",))
    token = api.token_for(define_domain(VNC))
    for response in [
        api.client.get(f"/console?token={token}"),
        api.client.get(f"/console/{UUID}/terminal"),
        api.client.get("/console?token=nonsense"),  # the error page too
    ]:
        assert response.headers["content-security-policy"].endswith("frame-ancestors 'self' https://panel.example.com")
        assert "x-frame-options" not in response.headers


def test_page_templates_are_filled_in_escaped(api) -> None:
    page = api.client.get("/console/%22%3E%3Cscript%3Ex/")
    assert page.status_code == 200
    assert "<script>x" not in page.text and 'data-console="&quot;&gt;&lt;script&gt;x"' in page.text
    assert 'data-console-dir="./"' in page.text and re.search(
        r'src="\.\./\.\./static/console-[A-Z0-9]+\.js"', page.text
    )
    assert "{{" not in page.text
