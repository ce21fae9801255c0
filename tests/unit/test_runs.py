"""A link is for one run of its domain: checked at connect time, not only through events."""

from __future__ import annotations

import pytest

from broker.errors import LIBVIRT_UNAVAILABLE, TOKEN_REVOKED, BrokerError
from broker.model import ConsoleRef
from broker.sources.consoles import LibvirtConsoles
from unit_support import TEST_URI, mute, run_async, vnc_graphics


@pytest.fixture
def consoles():
    made = LibvirtConsoles(TEST_URI)
    yield made
    mute(made)
    made.close()


def test_links_name_the_run_they_were_minted_for(api, define_domain) -> None:
    domain = define_domain(vnc_graphics(5905))
    api.token_for(domain)
    [grant] = [g for g in api.broker.tokens.store._grants.values() if g.console.uuid == domain.UUIDString()]
    assert grant.console.run_id == domain.ID()


def test_a_link_for_an_earlier_run_is_revoked_at_connect(consoles, define_domain) -> None:
    """Had the STOPPED event been lost (libvirtd restarting, say), the link of the run
    before must still not open this one."""
    domain = define_domain(vnc_graphics(5905))
    with pytest.raises(BrokerError) as caught:
        run_async(consoles.open(ConsoleRef(domain.UUIDString(), 0, run_id=domain.ID() + 1000)))
    assert caught.value.failure is TOKEN_REVOKED and "restarted" in caught.value.message


def test_the_run_check_after_connecting_does_not_pass_what_it_could_not_verify(consoles, monkeypatch) -> None:
    async def unavailable(*_args: object, **_kwargs: object) -> object:
        raise BrokerError(LIBVIRT_UNAVAILABLE)

    monkeypatch.setattr(consoles, "run", unavailable)
    uuid = "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"
    assert run_async(consoles.still_running(uuid, 1)) is True  # "did the VM stop?": don't claim it did
    with pytest.raises(BrokerError) as caught:
        run_async(consoles.still_running(uuid, 1, unknown=False))
    assert caught.value.failure is LIBVIRT_UNAVAILABLE
