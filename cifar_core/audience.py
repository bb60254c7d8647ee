"""Audience mode: people in the room send photos from their phones to the presenter's screen.

Safe by construction:
- off unless the dashboard was started with `-- --audience`, and then only once the
  presenter opens the room on the Audience page;
- a separate small FastAPI app on its own port: phones reach these two routes and
  nothing else (the dashboard itself stays on localhost);
- every request must carry the room's join code (compared in constant time);
- an upload is capped in bytes before it is read, decoded by the studio's one
  validating decoder, and rate-limited per client address;
- photos live in this process's memory only (a bounded gallery), gone when the
  dashboard stops, unless the presenter saves them.
"""

import html
import io
import itertools
import secrets
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CifarError
from .uploads import MAX_UPLOAD_BYTES, single_file, size_refusal

ENABLE_FLAG = "--audience"
DEFAULT_PORT = 8502
MAX_GALLERY = 48  # the oldest photo leaves when a new one arrives
THUMBNAIL_SIZE = 256
JOIN_CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud from a screen
JOIN_CODE_LENGTH = 6
# Per client address: a burst of RATE_BURST uploads, then one every RATE_REFILL_SECONDS.
RATE_BURST = 3
RATE_REFILL_SECONDS = 10.0


def enabled(argv: list[str] | None = None) -> bool:
    """True only when the dashboard was started with the explicit flag (`streamlit run streamlit_app.py
    -- --audience`)."""
    return ENABLE_FLAG in (sys.argv if argv is None else argv)[1:]


@dataclass
class AudiencePhoto:
    number: int
    image: np.ndarray  # RGB uint8, at most THUMBNAIL_SIZE on its longer side
    votes: dict[str, tuple[str, float]] = field(default_factory=dict)  # run -> (class, probability)


MAX_TRACKED_DEVICES = 10_000  # rate-limit buckets kept; the oldest is forgotten first


class RateLimiter:
    """A token bucket per client address."""

    def __init__(self, burst: int = RATE_BURST, refill_seconds: float = RATE_REFILL_SECONDS, clock=time.monotonic):
        self.burst, self.refill_seconds, self.clock = burst, refill_seconds, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        with self._lock:
            now = self.clock()
            tokens, since = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - since) / self.refill_seconds)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > MAX_TRACKED_DEVICES:  # a flood of spoofed addresses cannot grow this
                self._buckets.pop(next(iter(self._buckets)))
            return allowed


class Room:
    """One open room: its join code, its gallery, its rate limiter."""

    def __init__(self, code: str | None = None, limiter: RateLimiter | None = None):
        self.code = code or "".join(secrets.choice(JOIN_CODE_LETTERS) for _ in range(JOIN_CODE_LENGTH))
        self.limiter = limiter or RateLimiter()
        self._photos: deque[AudiencePhoto] = deque(maxlen=MAX_GALLERY)
        self._numbers = itertools.count(1)
        self._saved_through = 0  # the highest photo number a save has written or found written
        self._lock = threading.Lock()

    def admits(self, code: str) -> bool:
        return secrets.compare_digest(code.upper().encode(), self.code.encode())

    def add(self, data: bytes) -> AudiencePhoto:
        """Decode (the studio's validating decoder), shrink and keep one uploaded photo."""
        from .imaging import decode_image, fit_within

        image = fit_within(decode_image(data, "audience photo"), THUMBNAIL_SIZE)
        with self._lock:
            photo = AudiencePhoto(next(self._numbers), image)
            self._photos.append(photo)
        return photo

    def photos(self) -> list[AudiencePhoto]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._photos))

    def unsaved(self) -> int:
        """How many photos of the gallery no save has written yet (closing the room loses them)."""
        with self._lock:
            return sum(photo.number > self._saved_through for photo in self._photos)

    def save(self, folder: Path) -> int:
        """Write the gallery as PNG files into `folder` (the presenter's choice), never over a file there:
        each is named by the room's code and the photo's number, so a later room saved into the same
        folder (the default is one a day) adds its photos beside the earlier room's, and this room's
        photos saved before are left as they are. Returns how many of the gallery the folder holds."""
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        photos = self.photos()
        for photo in photos:
            encoded = io.BytesIO()
            Image.fromarray(photo.image).save(encoded, format="PNG")
            try:
                with open(folder / f"audience-{self.code}-{photo.number:03d}.png", "xb") as handle:
                    handle.write(encoded.getvalue())
            except FileExistsError:
                continue  # saved before
        if photos:
            with self._lock:
                self._saved_through = max(self._saved_through, photos[0].number)
        return len(photos)


JOIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>CIFAR-10 Studio: send a photo</title>
<style>body{{font-family:sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem}}
button{{font-size:1.2rem;padding:.6rem 1.2rem}}</style></head><body>
<h1>Send a photo to the screen</h1><p>{message}</p>
<form method="post" action="/join/{code}/photo" enctype="multipart/form-data">
<p><input type="file" name="photo" accept="image/*" capture="environment" required></p>
<p><button type="submit">Send</button></p></form>
<p><small>Your photo is shown on the presenter's screen and forgotten when the talk ends.
Up to {limit}.</small></p></body></html>"""


def create_app(room: Room):
    """The audience's FastAPI app: GET /join/{code} (the upload form), POST /join/{code}/photo."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    from .safeio import size_text

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # serves nothing but the join routes

    def answer(request: Request, status: int, message: str):
        if "text/html" in request.headers.get("accept", ""):
            page = JOIN_PAGE.format(message=html.escape(message), code=html.escape(room.code),
                                    limit=size_text(MAX_UPLOAD_BYTES))
            return HTMLResponse(page, status_code=status)
        return JSONResponse({"message": message}, status_code=status)

    refused = {"message": "wrong or expired join code"}

    @app.get("/join/{code}")
    def join(code: str, request: Request):
        if not room.admits(code):
            return JSONResponse(refused, status_code=403)
        return answer(request, 200, "Take or pick a photo; the models on the screen will vote on it.")

    @app.post("/join/{code}/photo")
    async def photo(code: str, request: Request):
        if not room.admits(code):
            return JSONResponse(refused, status_code=403)
        client = request.client.host if request.client else "unknown"
        if not room.limiter.allow(client):
            return answer(request, 429, "Too many photos from this device: wait a few seconds.")
        refusal = size_refusal(request, MAX_UPLOAD_BYTES)
        if refusal:
            return answer(request, *refusal)
        try:
            data, _ = await single_file(request, "photo", MAX_UPLOAD_BYTES)
            room.add(data)
        except CifarError as exc:
            return answer(request, 400, f"That photo was not accepted: {exc}")
        return answer(request, 200, "Thanks! Your photo is on the screen.")

    return app


def lan_address() -> str:
    """This machine's address on the local network (no packet is sent), else 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class AudienceServer:
    """The audience app served by uvicorn in a daemon thread of the dashboard's process."""

    def __init__(self, room: Room, host: str = "0.0.0.0", port: int = DEFAULT_PORT):  # noqa: S104 - phones on the LAN
        import uvicorn

        self.room, self.host, self.port = room, host, port
        config = uvicorn.Config(create_app(room), host=host, port=port, log_level="warning",
                                limit_concurrency=64, timeout_keep_alive=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="audience-server", daemon=True)

    def _serve(self) -> None:
        # uvicorn ends a server that cannot bind its port with sys.exit: in this thread that would be a
        # traceback in the dashboard's log. start() reports it to the presenter as one line instead.
        try:
            self._server.run()
        except (SystemExit, OSError):
            return

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise CifarError(f"the audience server could not listen on port {self.port} "
                                 "(in use? start the dashboard with another --audience-port)")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def join_url(self) -> str:
        host = lan_address() if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}/join/{self.room.code}"


def qr_png(text: str) -> bytes:
    """A QR code of `text` as PNG bytes (segno: pure Python)."""
    import segno

    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind="png", scale=8, border=2)
    return buffer.getvalue()


def port_from(argv: list[str] | None = None) -> int:
    """`--audience-port N` from the dashboard's arguments, else DEFAULT_PORT."""
    args = (sys.argv if argv is None else argv)[1:]
    if "--audience-port" in args:
        position = args.index("--audience-port") + 1
        if position < len(args) and args[position].isdigit() and 1024 <= int(args[position]) <= 65535:
            return int(args[position])
        raise CifarError("--audience-port needs a port number from 1024 to 65535")
    return DEFAULT_PORT
