"""Screenshots of real QEMU domains through the real broker: PNGs of the framebuffer's size."""

from __future__ import annotations

import io

import libvirt
import pytest
from PIL import Image
from websockets.sync.client import connect

from support.processes import BrokerProcess
from support.rfb_client import handshake

pytestmark = pytest.mark.integration

VGA_SIZES = {(640, 480), (720, 400)}  # SeaBIOS graphics, then text mode


def framebuffer_size(broker: BrokerProcess, domain: libvirt.virDomain) -> tuple[int, int]:
    """The size QEMU's VNC server announces (ServerInit), through a console link."""
    with connect(broker.mint(domain.name(), mode="view-only")["websocket_url"], open_timeout=10) as ws:
        init = handshake(ws)
    return init.width, init.height


def png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    image.load()  # the whole image decodes
    return image


def test_screenshot_is_a_png_of_the_framebuffer(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    before = framebuffer_size(broker, tcp_vm)
    image = png(broker.api("GET", f"/api/v1/domains/{tcp_vm.name()}/screenshot"))
    after = framebuffer_size(broker, tcp_vm)
    # SeaBIOS may switch from graphics to text mode once: the screenshot is of one of the two.
    assert image.size in {before, after}
    assert image.size in VGA_SIZES


def test_screenshot_by_uuid_of_a_vm_without_a_vnc_listener(broker: BrokerProcess, fd_vm: libvirt.virDomain) -> None:
    assert png(broker.api("GET", f"/api/v1/domains/{fd_vm.UUIDString()}/screenshot")).size in VGA_SIZES


@pytest.mark.parametrize("width", [16, 100, 320])
def test_thumbnails_scale(broker: BrokerProcess, tcp_vm: libvirt.virDomain, width: int) -> None:
    image = png(broker.api("GET", f"/api/v1/domains/{tcp_vm.name()}/screenshot", params={"width": width}))
    assert image.size in {(width, round(h * width / w)) for w, h in VGA_SIZES}


def test_screenshot_of_a_stopped_vm_is_409(broker: BrokerProcess, off_vm: libvirt.virDomain) -> None:
    response = broker.api("GET", f"/api/v1/domains/{off_vm.name()}/screenshot")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "domain_not_running"
    assert "shutoff" in response.json()["error"]["message"]


def test_screenshot_width_out_of_bounds_is_422(broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    response = broker.api("GET", f"/api/v1/domains/{tcp_vm.name()}/screenshot", params={"width": 5000})
    assert response.status_code == 422
    assert "width must be" in response.json()["error"]["message"]
