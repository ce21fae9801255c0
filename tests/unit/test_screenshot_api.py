"""Screenshots over REST on libvirt's test:///default driver (whose virDomainScreenshot sends a
real PNG through a real libvirt stream), and the PNG conversion on its own."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from test_api import assert_error

from broker.access.keys import parse_keys
from broker.errors import BrokerError
from broker.images import MAX_WIDTH, MIN_WIDTH, ImageError, ppm, to_png
from broker.model import DomainInfo
from broker.sources.consoles import LibvirtConsoles
from broker.sources.graphics import parse_target
from broker.sources.static import CombinedConsoles, StaticConsoles, static_uuid
from broker.web.screenshots import MAX_CACHED, Screenshots, screenshot_width
from unit_support import AUTH, BUILTIN_DOMAIN, TEST_URI, FakeClock, run_async

# -- the conversion ---------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_ppm_becomes_a_png_of_the_same_size_and_colours() -> None:
    png = to_png(ppm(720, 400, (10, 20, 30)))
    assert (png.width, png.height) == (720, 400) == png_size(png.data)
    with Image.open(io.BytesIO(png.data)) as image:
        assert image.convert("RGB").getpixel((719, 399)) == (10, 20, 30)


@pytest.mark.parametrize(("width", "expected"), [(360, (360, 200)), (100, (100, 56)), (16, (16, 9)), (720, (720, 400))])
def test_thumbnails_keep_the_aspect(width: int, expected: tuple[int, int]) -> None:
    png = to_png(ppm(720, 400), width)
    assert (png.width, png.height) == expected == png_size(png.data)


def test_a_thumbnail_is_never_scaled_up() -> None:
    png = to_png(ppm(640, 480), 1024)
    assert png_size(png.data) == (640, 480)


@pytest.mark.parametrize("width", [0, MIN_WIDTH - 1, MAX_WIDTH + 1])
def test_widths_out_of_bounds_are_refused(width: int) -> None:
    with pytest.raises(ValueError, match="width must be"):
        to_png(ppm(64, 64), width)


@pytest.mark.parametrize("data", [b"", b"P6\n", b"not an image", ppm(4, 4)[:-5]])
def test_what_is_not_an_image_is_an_image_error(data: bytes) -> None:
    with pytest.raises(ImageError):
        to_png(data)


# -- ?width= ------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [{"width": "15"}, {"width": "4097"}, {"width": "-1"}, {"width": "1e2"},
                                   {"width": " 64"}, {"width": "٦٤"}, {"width": ""}, {"widht": "64"}])  # fmt: skip
def test_screenshot_width_refuses(query: dict[str, str]) -> None:
    with pytest.raises(BrokerError) as caught:
        screenshot_width(query.items())
    assert caught.value.failure.slug == "invalid_input"


def test_screenshot_width_accepts() -> None:
    assert screenshot_width([]) is None
    assert screenshot_width([("width", "16")]) == 16
    assert screenshot_width([("width", str(MAX_WIDTH))]) == MAX_WIDTH


def test_screenshot_width_may_be_given_once() -> None:
    with pytest.raises(BrokerError, match="once"):
        screenshot_width([("width", "16"), ("width", "32")])


# -- the cache and the limiter, on a screen source that counts ------------------------------


class CountingScreen:
    def __init__(self) -> None:
        self.calls = 0

    async def screenshot(self, uuid: str) -> tuple[str, bytes]:
        self.calls += 1
        return "image/x-portable-pixmap", ppm(64, 48, (self.calls % 256, 0, 0))


RUNNING = DomainInfo("vm", "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11", "running", True, run_id=3)


def test_screenshots_are_cached_per_run_and_width_for_their_time() -> None:
    clock, screen = FakeClock(), CountingScreen()
    shots = Screenshots(2.0, 600, clock)
    first = run_async(shots.take(screen, RUNNING, None, "0"))
    assert run_async(shots.take(screen, RUNNING, None, "0")) is first
    assert run_async(shots.take(screen, RUNNING, None, "1")) is first  # any key: the same screen
    assert screen.calls == 1
    run_async(shots.take(screen, RUNNING, 32, "0"))
    assert screen.calls == 2  # another width
    restarted = DomainInfo(RUNNING.name, RUNNING.uuid, "running", True, run_id=4)
    run_async(shots.take(screen, restarted, None, "0"))
    assert screen.calls == 3  # another run of the domain
    clock.advance(2.0)
    assert run_async(shots.take(screen, RUNNING, None, "0")) is not first
    assert screen.calls == 4


def test_no_cache_when_screenshot_cache_is_0() -> None:
    screen = CountingScreen()
    shots = Screenshots(0, 600, FakeClock())
    run_async(shots.take(screen, RUNNING, None, "0"))
    run_async(shots.take(screen, RUNNING, None, "0"))
    assert screen.calls == 2


def test_the_cache_is_bounded() -> None:
    screen = CountingScreen()
    shots = Screenshots(60, 10_000_000, FakeClock())
    for run_id in range(MAX_CACHED + 10):
        run_async(shots.take(screen, DomainInfo("vm", RUNNING.uuid, "running", True, run_id=run_id), 16, "0"))
    assert len(shots._cache) == MAX_CACHED


def test_only_libvirt_calls_count_against_the_rate_per_key() -> None:
    clock, screen = FakeClock(), CountingScreen()
    shots = Screenshots(2.0, 6, clock)  # 6 a minute: a burst of 1, then one every 10 s
    run_async(shots.take(screen, RUNNING, None, "0"))
    run_async(shots.take(screen, RUNNING, None, "0"))  # cached: free
    with pytest.raises(BrokerError) as caught:
        run_async(shots.take(screen, RUNNING, 32, "0"))
    assert caught.value.failure.slug == "rate_limited"
    assert caught.value.retry_after == pytest.approx(10.0)
    run_async(shots.take(screen, RUNNING, 32, "1"))  # another key has its own budget
    clock.advance(10.0)
    run_async(shots.take(screen, RUNNING, 32, "0"))
    assert screen.calls == 3


def test_a_stopped_domain_has_no_screen() -> None:
    stopped = DomainInfo("vm", RUNNING.uuid, "shutoff", False)
    with pytest.raises(BrokerError) as caught:
        run_async(Screenshots(2.0, 600, FakeClock()).take(CountingScreen(), stopped, None, "0"))
    assert caught.value.failure.slug == "domain_not_running"
    assert "shutoff" in caught.value.message


# -- over REST, through libvirt's test driver ---------------------------------------------


def test_screenshot_is_a_png_with_no_store(api) -> None:
    response = api.client.get(f"/api/v1/domains/{BUILTIN_DOMAIN}/screenshot", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    width, height = png_size(response.content)
    thumb = api.client.get(f"/api/v1/domains/{BUILTIN_DOMAIN}/screenshot?width=100", headers=AUTH)
    assert thumb.status_code == 200, thumb.text
    assert png_size(thumb.content) == (100, round(height * 100 / width))


def test_screenshot_needs_the_api_key(api) -> None:
    response = api.client.get(f"/api/v1/domains/{BUILTIN_DOMAIN}/screenshot")
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_screenshot_of_a_stopped_domain_is_409(api, define_domain) -> None:
    domain = define_domain(start=False)
    assert_error(api.client.get(f"/api/v1/domains/{domain.name()}/screenshot", headers=AUTH), 409, "domain_not_running")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/v1/domains/no-such-domain/screenshot", 404, "domain_not_found"),
        (f"/api/v1/domains/{BUILTIN_DOMAIN}/screenshot?width=8", 422, "invalid_input"),
        (f"/api/v1/domains/{BUILTIN_DOMAIN}/screenshot?width=wide", 422, "invalid_input"),
        (f"/api/v1/domains/{BUILTIN_DOMAIN}/screenshot?size=8", 422, "invalid_input"),
        ("/api/v1/domains/uuid:nope/screenshot", 422, "invalid_input"),
    ],
)
def test_screenshot_refusals(api, path: str, status: int, code: str) -> None:
    assert_error(api.client.get(path, headers=AUTH), status, code)


def test_screenshot_rate_limit_answers_429_with_retry_after(api, clock) -> None:
    api.broker.screenshots = Screenshots(0, 6, clock)  # no cache, 1 at once, then one per 10 s
    url = f"/api/v1/domains/{BUILTIN_DOMAIN}/screenshot?width=64"
    assert api.client.get(url, headers=AUTH).status_code == 200
    response = api.client.get(url, headers=AUTH)
    assert_error(response, 429, "rate_limited")
    assert response.headers["retry-after"] == "10"


def test_screenshots_need_the_right_and_the_domain_in_scope(api, monkeypatch) -> None:
    keys = parse_keys(
        [
            {"label": "lister", "key": "l" * 20, "rights": ["list"]},
            {"label": "web-thumbs", "key": "w" * 20, "domains": ["web-*"], "rights": ["screenshot"]},
            {"label": "thumbs", "key": "t" * 20, "domains": [BUILTIN_DOMAIN], "rights": ["screenshot"]},
        ]
    )
    monkeypatch.setattr(api.broker, "api_keys", keys)
    url = f"/api/v1/domains/{BUILTIN_DOMAIN}/screenshot"
    refused = assert_error(api.client.get(url, headers={"Authorization": "Bearer " + "l" * 20}), 403, "forbidden")
    assert "'screenshot'" in refused["message"]
    refused = assert_error(api.client.get(url, headers={"Authorization": "Bearer " + "w" * 20}), 403, "forbidden")
    assert "outside the scope" in refused["message"]
    assert api.client.get(url, headers={"Authorization": "Bearer " + "t" * 20}).status_code == 200


def test_a_static_console_has_no_screenshot() -> None:
    libvirt_consoles = LibvirtConsoles(TEST_URI)
    consoles = CombinedConsoles(StaticConsoles({"desk": parse_target("tcp:127.0.0.1:5901")}), libvirt_consoles)
    try:
        with pytest.raises(BrokerError) as caught:
            run_async(consoles.screenshot(static_uuid("desk")))
    finally:
        libvirt_consoles.close()
    assert caught.value.failure.slug == "no_console"
    assert "static console" in caught.value.message
