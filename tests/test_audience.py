"""Audience mode: off unless asked, the join code on every request, capped and validated uploads,
a rate limit per device, and the presenter's pages unaffected by a flood."""
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import free_port, open_page, png_bytes

from cifar_core import audience
from cifar_core.errors import CifarError
from cifar_core.uploads import FORM_OVERHEAD_BYTES

PHOTO = png_bytes(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def room():
    return audience.Room(code="ABC234", limiter=audience.RateLimiter(clock=Clock()))


@pytest.fixture
def client(room):
    return TestClient(audience.create_app(room))


def _send(client, data=PHOTO, code="ABC234", name="photo.png", **headers):
    return client.post(f"/join/{code}/photo", files={"photo": (name, io.BytesIO(data), "image/png")},
                       headers=headers)


def test_off_unless_the_dashboard_was_started_with_the_flag():
    assert not audience.enabled(["streamlit_app.py"])
    assert not audience.enabled(["--audience"])  # the program's own name is not a flag
    assert audience.enabled(["streamlit_app.py", "--audience"])


def test_every_request_needs_the_join_code(client, room):
    assert client.get("/join/ABC234").status_code == 200
    assert client.get("/join/abc234").status_code == 200  # typed in lower case on a phone
    for path in ("/join/WRONG1", "/join/ABC23", "/join/"):
        assert client.get(path).status_code in (403, 404)
    assert _send(client, code="WRONG1").status_code == 403
    assert room.photos() == []
    for path in ("/", "/docs", "/redoc", "/openapi.json", "/Classify", "/_stcore/health"):  # nothing else is served
        assert client.get(path).status_code == 404


def test_a_photo_joins_the_gallery_shrunk_and_newest_first(client, room):
    assert _send(client).status_code == 200
    second = png_bytes(np.zeros((20, 30, 3), np.uint8))
    assert _send(client, data=second).status_code == 200
    first, older = room.photos()
    assert first.number == 2 and first.image.shape == (20, 30, 3)
    assert max(older.image.shape[:2]) == audience.THUMBNAIL_SIZE and older.image.shape[2] == 3


def test_the_upload_form_is_html_for_a_browser(client):
    page = client.get("/join/ABC234", headers={"accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert 'action="/join/ABC234/photo"' in page.text and 'type="file"' in page.text


@pytest.mark.parametrize("data", [b"not an image at all", PHOTO[: len(PHOTO) // 3], b""])
def test_a_hostile_file_is_refused_with_a_message(client, room, data):
    answer = _send(client, data=data)
    assert answer.status_code == 400 and "not accepted" in answer.json()["message"]
    assert room.photos() == []


def test_an_oversized_upload_is_refused_before_it_is_read(client, room, monkeypatch):
    monkeypatch.setattr(audience, "MAX_UPLOAD_BYTES", 1000)
    read = []
    monkeypatch.setattr(audience, "single_file", lambda *args: read.append(1))
    answer = _send(client, data=b"x" * (1000 + FORM_OVERHEAD_BYTES + 1))
    assert answer.status_code == 413 and not read and room.photos() == []


def test_a_flood_from_one_device_is_rate_limited(room):
    clock = room.limiter.clock
    client = TestClient(audience.create_app(room))
    answers = [_send(client).status_code for _ in range(audience.RATE_BURST + 5)]
    assert answers == [200] * audience.RATE_BURST + [429] * 5
    assert len(room.photos()) == audience.RATE_BURST
    clock.now += audience.RATE_REFILL_SECONDS  # one more token
    assert _send(client).status_code == 200 and _send(client).status_code == 429


def test_the_rate_limit_is_per_device():
    limiter = audience.RateLimiter(burst=1, clock=Clock())
    assert limiter.allow("10.0.0.2") and not limiter.allow("10.0.0.2")
    assert limiter.allow("10.0.0.3")


def test_the_gallery_is_bounded_and_saved_only_when_asked(room, tmp_path, monkeypatch):
    monkeypatch.setattr(audience, "MAX_GALLERY", 3)
    bounded = audience.Room(code="ABC234")
    for value in range(5):
        bounded.add(png_bytes(np.full((8, 8, 3), value * 40, np.uint8)))
    assert [p.number for p in bounded.photos()] == [5, 4, 3]
    assert bounded.save(tmp_path / "saved") == 3
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "audience-ABC234-003.png", "audience-ABC234-004.png", "audience-ABC234-005.png"]


def test_join_codes_are_unambiguous_and_random():
    codes = {audience.Room().code for _ in range(50)}
    assert len(codes) == 50
    assert all(len(c) == audience.JOIN_CODE_LENGTH and set(c) <= set(audience.JOIN_CODE_LETTERS) for c in codes)
    assert not set("01OI") & set(audience.JOIN_CODE_LETTERS)


def test_the_port_flag_is_checked():
    assert audience.port_from(["app"]) == audience.DEFAULT_PORT
    assert audience.port_from(["app", "--audience", "--audience-port", "9000"]) == 9000
    for bad in (["app", "--audience-port"], ["app", "--audience-port", "80"], ["app", "--audience-port", "x"]):
        with pytest.raises(CifarError, match="^--audience-port needs a port number from 1024 to 65535$"):
            audience.port_from(bad)


def test_a_server_starts_answers_and_stops(room):
    import httpx

    server = audience.AudienceServer(room, host="127.0.0.1", port=free_port())
    started = time.monotonic()
    server.start()
    try:
        assert time.monotonic() - started < 5
        reply = httpx.get(server.join_url(), headers={"accept": "text/html"}, timeout=5)
        assert reply.status_code == 200 and 'action="/join/ABC234/photo"' in reply.text
    finally:
        server.stop()
    assert not server._thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.join_url(), timeout=2)


@pytest.mark.integration
def test_a_real_server_answers_while_flooded_and_stops(room):
    import httpx

    server = audience.AudienceServer(room, host="127.0.0.1", port=free_port())
    server.start()
    try:
        url = server.join_url()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/join/ABC234")
        with httpx.Client(timeout=10) as http:
            statuses = [http.post(f"{url}/photo", files={"photo": ("p.png", PHOTO)}).status_code for _ in range(20)]
            started = time.perf_counter()
            assert http.get(url).status_code == 200
            assert time.perf_counter() - started < 1.0
        assert statuses.count(200) == audience.RATE_BURST and set(statuses) == {200, 429}
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def _captions(image_element) -> list[str]:
    return [img.caption for img in image_element.proto.imgs]


def test_qr_code_is_a_png_of_8_px_modules_inside_a_2_module_quiet_zone():
    from PIL import Image

    png = audience.qr_png("http://192.168.1.20:8502/join/ABC234")
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert png.startswith(b"\x89PNG") and image.shape[0] == image.shape[1] and image.shape[0] % 8 == 0
    assert (image[:16] == 255).all() and (image[:, :16] == 255).all()  # the quiet zone: 2 modules of 8 px
    assert (image[16:72, 16:24] == 0).all()  # the finder pattern's 7-module left edge, dark
    modules = image.shape[0] // 8 - 4
    assert (modules - 17) % 4 == 0  # a QR version: 21, 25, ... modules a side


@pytest.mark.integration
def test_the_presenter_page_explains_how_to_turn_it_on(studio):
    page = open_page("pages/8_Audience.py")
    assert any("-- --audience" in info.value for info in page.info)


@pytest.mark.integration
def test_the_presenter_page_shows_the_room_and_the_votes(studio, monkeypatch):
    from cifar_core import ui

    monkeypatch.setattr(audience.sys, "argv", ["streamlit_app.py", "--audience", "--audience-port", "0"])
    room = audience.Room(code="XYZ789")
    room.add(PHOTO)

    class FakeServer:
        def __init__(self):
            self.room = room

        def join_url(self):
            return "http://192.168.1.20:8502/join/XYZ789"

    monkeypatch.setitem(ui._audience, "server", FakeServer())
    page = open_page("pages/8_Audience.py")
    assert any("XYZ789" in m.value for m in page.markdown)
    assert room.photos()[0].votes  # every voting model voted on the photo
    captions = " ".join(caption for image in page.get("image") for caption in _captions(image))
    label, probability = next(iter(room.photos()[0].votes.values()))
    assert "#1 · " in captions and f"{label} ({probability:.0%})" in captions


def test_the_port_flag_bounds_are_inclusive_and_the_program_args_are_read_by_default(monkeypatch):
    assert audience.port_from(["app", "--audience-port", "1024"]) == 1024
    assert audience.port_from(["app", "--audience-port", "65535"]) == 65535
    for bad in ("1023", "65536", "-1"):
        with pytest.raises(CifarError, match="1024 to 65535"):
            audience.port_from(["app", "--audience-port", bad])
    monkeypatch.setattr(audience.sys, "argv", ["streamlit_app.py", "--audience", "--audience-port", "9100"])
    assert audience.port_from() == 9100 and audience.enabled()


def test_tokens_refill_at_the_stated_rate_up_to_the_burst():
    clock = Clock()
    limiter = audience.RateLimiter(burst=2, refill_seconds=10.0, clock=clock)
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    clock.now = 9.9
    assert not limiter.allow("a")  # 0.99 of a token
    clock.now = 10.0
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now = 1000.0  # a long pause refills to the burst, no more
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")


def test_saved_photos_are_the_gallery_pixels(tmp_path):
    from PIL import Image

    room = audience.Room(code="ABC234")
    pixels = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    room.add(png_bytes(pixels))
    assert room.save(tmp_path / "nested" / "folder") == 1
    saved = tmp_path / "nested" / "folder" / "audience-ABC234-001.png"
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), pixels)


def test_a_form_without_a_photo_or_with_text_instead_is_refused(client, room):
    for files in ({"other": ("p.png", io.BytesIO(PHOTO), "image/png")}, None):
        answer = client.post("/join/ABC234/photo", files=files, data={"photo": "not a file"} if files is None else {})
        assert answer.status_code == 400 and "no file in the upload (field 'photo')" in answer.json()["message"]
    assert room.photos() == []


def test_a_photo_one_byte_over_the_cap_is_refused_and_one_at_the_cap_read(client, room, monkeypatch):
    monkeypatch.setattr(audience, "MAX_UPLOAD_BYTES", len(PHOTO))
    assert _send(client).status_code == 200
    answer = _send(client, data=PHOTO + b"\0")
    assert answer.status_code == 400 and "larger than" in answer.json()["message"]
    assert len(room.photos()) == 1


def test_answers_speak_html_to_browsers_and_json_to_programs(client):
    html_answer = _send(client, accept="text/html")
    assert html_answer.headers["content-type"].startswith("text/html")
    assert "Thanks! Your photo is on the screen." in html_answer.text and "Up to 8 MiB." in html_answer.text
    json_answer = _send(client, data=b"junk")
    assert json_answer.headers["content-type"].startswith("application/json")
    assert client.get("/join/WRONG1").json() == {"message": "wrong or expired join code"}


def test_the_join_url_names_this_machine_on_the_network(room, monkeypatch):
    server = audience.AudienceServer(room, host="0.0.0.0", port=8502)  # noqa: S104
    monkeypatch.setattr(audience, "lan_address", lambda: "192.168.1.20")
    assert server.join_url() == "http://192.168.1.20:8502/join/ABC234"
    assert audience.AudienceServer(room, host="127.0.0.1", port=9000).join_url() == "http://127.0.0.1:9000/join/ABC234"


def test_lan_address_falls_back_to_loopback_without_a_network(monkeypatch):
    class NoRoute:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def connect(self, address):
            raise OSError("network is unreachable")

    monkeypatch.setattr(audience.socket, "socket", NoRoute)
    assert audience.lan_address() == "127.0.0.1"


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # no traceback in the log
def test_a_busy_port_is_one_clear_error(room):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = audience.AudienceServer(room, host="127.0.0.1", port=port)
        started = time.monotonic()
        with pytest.raises(CifarError, match=f"could not listen on port {port} "
                                             r"\(in use\? start the dashboard with another --audience-port\)"):
            server.start(timeout=60)
        # Said as soon as the server gives up, not after the start-up timeout.
        assert time.monotonic() - started < 20


def test_the_lan_address_is_read_from_a_udp_socket_that_sends_nothing(monkeypatch):
    import socket

    opened = []

    class Probe:
        def __init__(self, family, kind):
            opened.append((family, kind))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def connect(self, address):
            opened.append(address)

        def getsockname(self):
            return ("192.168.1.20", 40000)

    monkeypatch.setattr(audience.socket, "socket", Probe)
    assert audience.lan_address() == "192.168.1.20"
    assert opened == [(socket.AF_INET, socket.SOCK_DGRAM), ("10.255.255.255", 1)]


def test_a_program_that_sends_no_accept_header_gets_json(client):
    del client.headers["accept"]
    answer = _send(client, data=b"junk")
    assert answer.status_code == 400 and answer.headers["content-type"].startswith("application/json")


def test_the_rate_limiter_remembers_a_bounded_number_of_devices_forgetting_the_oldest():
    def address(device: int) -> str:
        return f"10.0.{device // 256}.{device % 256}"

    limiter = audience.RateLimiter(burst=1, clock=Clock())
    devices = audience.MAX_TRACKED_DEVICES + 50
    assert all(limiter.allow(address(device)) for device in range(devices))
    assert len(limiter._buckets) == audience.MAX_TRACKED_DEVICES
    assert not limiter.allow(address(devices - 1))  # remembered: its one token is spent
    assert limiter.allow(address(0))  # forgotten, so it starts again with a full bucket


def test_a_refusal_to_a_browser_keeps_its_status_and_names_the_photo(client, room):
    refused = _send(client, data=b"junk", accept="text/html")
    assert refused.status_code == 400 and refused.headers["content-type"].startswith("text/html")
    assert "That photo was not accepted: audience photo:" in refused.text
    assert room.photos() == []


def test_the_gallery_can_be_saved_again_into_the_same_folder(tmp_path):
    room = audience.Room(code="ABC234")
    room.add(PHOTO)
    assert room.save(tmp_path / "gallery") == 1
    room.add(PHOTO)
    assert room.save(tmp_path / "gallery") == 2
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == ["audience-ABC234-001.png",
                                                                         "audience-ABC234-002.png"]


def test_a_later_room_saved_into_the_same_folder_keeps_the_earlier_room_s_photos(tmp_path):
    # The default folder is one a day, and every room numbers its photos from 1: the afternoon talk's
    # gallery replaced the morning's, photo for photo.
    from PIL import Image

    morning, afternoon = audience.Room(code="ABC234"), audience.Room(code="XYZ789")
    morning.add(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    afternoon.add(png_bytes(np.full((8, 8, 3), 255, np.uint8)))
    folder = tmp_path / "studio-audience-today"
    assert morning.save(folder) == 1 and afternoon.save(folder) == 1
    kept = {p.name: np.asarray(Image.open(p)).max() for p in folder.iterdir()}
    assert kept == {"audience-ABC234-001.png": 0, "audience-XYZ789-001.png": 255}
    (folder / "audience-ABC234-001.png").write_bytes(b"the presenter's edit")
    morning.add(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    morning.add(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    (folder / "audience-ABC234-003.png").write_bytes(b"another edit")  # the newest photo's name, taken
    assert morning.save(folder) == 3  # saved again: what is there already is left as it is, the rest added
    assert (folder / "audience-ABC234-001.png").read_bytes() == b"the presenter's edit"
    assert (folder / "audience-ABC234-003.png").read_bytes() == b"another edit"
    assert (folder / "audience-ABC234-002.png").read_bytes().startswith(b"\x89PNG")


def test_the_audience_server_is_bounded_and_runs_beside_the_dashboard(room, monkeypatch):
    server = audience.AudienceServer(room, "0.0.0.0", 8765)  # configured, not started  # noqa: S104
    config = server._server.config
    assert (config.host, config.port, config.log_level) == ("0.0.0.0", 8765, "warning")  # noqa: S104
    assert config.app.routes[-1].path == "/join/{code}/photo"
    assert server._thread.name == "audience-server"  # how a crash in it is reported
    # A flood gets 503s beyond 64 open connections, and idle phones are let go after 5 s.
    assert config.limit_concurrency == 64 and config.timeout_keep_alive == 5
    assert server._thread.daemon and not server._thread.is_alive()  # never keeps the dashboard alive
    monkeypatch.setattr(audience, "lan_address", lambda: "192.168.1.20")
    assert server.join_url() == "http://192.168.1.20:8765/join/ABC234"
    assert audience.AudienceServer(room, "", 8765).join_url() == server.join_url()  # "" is every address too


def test_the_app_serves_no_documentation_pages(client):
    # FastAPI's /docs, /redoc and /openapi.json would describe the routes to anyone in the room.
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404, path


def test_the_server_listens_on_every_address_unless_told(room):
    # Phones reach the presenter's laptop over the LAN: loopback alone would shut them out.
    assert audience.AudienceServer(room)._server.config.host == "0.0.0.0"  # noqa: S104


def _qr_format_bits(png: bytes) -> int:
    """The 15 format bits a QR code's PNG carries beside its top-left finder (8 px modules, 2-module border)."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    dark = lambda row, col: int(image[(row + 2) * 8 + 4, (col + 2) * 8 + 4] < 128)  # noqa: E731
    cells = [(8, col) for col in (0, 1, 2, 3, 4, 5, 7, 8)] + [(row, 8) for row in (7, 5, 4, 3, 2, 1, 0)]
    return int("".join(str(dark(row, col)) for row, col in cells), 2)


def _qr_error_level(format_bits: int) -> str:
    """The error-correction level of a valid format word (ISO/IEC 18004: BCH(15,5), masked with 0x5412)."""
    for level, code in (("L", 1), ("M", 0), ("Q", 3), ("H", 2)):
        for mask in range(8):
            data = (code << 3 | mask) << 10
            remainder = data
            for bit in range(14, 9, -1):
                if remainder >> bit & 1:
                    remainder ^= 0x537 << (bit - 10)
            if (data | remainder) ^ 0x5412 == format_bits:
                return level
    raise AssertionError(f"not a QR format word: {format_bits:015b}")


def test_the_qr_code_survives_a_projector_s_glare():
    # A URL this short fits at level L; the code asks for at least M (15% of it may be unreadable).
    assert _qr_error_level(_qr_format_bits(audience.qr_png("http://10.0.0.1:8765/join/XYZ234"))) in "MQH"


def test_the_room_counts_the_photos_no_save_has_written(tmp_path):
    room = audience.Room(code="ABC234")
    assert room.unsaved() == 0
    room.add(PHOTO)
    room.add(PHOTO)
    assert room.unsaved() == 2
    room.save(tmp_path / "first")
    assert room.unsaved() == 0
    room.add(PHOTO)
    assert room.unsaved() == 1  # only the one that came after the save
    room.save(tmp_path / "second")
    assert room.unsaved() == 0


def _presenter_page(monkeypatch, room):
    from cifar_core import ui

    monkeypatch.setattr(audience.sys, "argv", ["streamlit_app.py", "--audience", "--audience-port", "0"])
    stopped = []

    class FakeServer:
        def __init__(self):
            self.room = room

        def join_url(self):
            return f"http://192.168.1.20:8502/join/{room.code}"

        def stop(self):
            stopped.append(True)

    monkeypatch.setitem(ui._audience, "server", FakeServer())
    return open_page("pages/8_Audience.py"), stopped


@pytest.mark.integration
def test_closing_a_room_with_unsaved_photos_asks_first_and_keeping_it_loses_nothing(studio, monkeypatch):
    room = audience.Room(code="XYZ789")
    room.add(PHOTO)
    page, stopped = _presenter_page(monkeypatch, room)
    page.button(key="audience_close").click().run()
    assert not stopped and any("1 photo(s) are not saved" in w.value for w in page.warning)
    page.button(key="audience_keep").click().run()
    assert not stopped and not page.warning and len(room.photos()) == 1
    page.button(key="audience_close").click().run()
    page.button(key="audience_discard").click().run()
    assert stopped == [True]


@pytest.mark.integration
def test_a_saved_room_closes_at_once(studio, monkeypatch, tmp_path):
    room = audience.Room(code="XYZ789")
    room.add(PHOTO)
    room.save(tmp_path)
    page, stopped = _presenter_page(monkeypatch, room)
    page.button(key="audience_close").click().run()
    assert stopped == [True] and not page.warning
