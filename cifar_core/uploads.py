"""One uploaded image over HTTP, bounded before it is read: the audience mode and the
prediction service take photos the same way."""
from __future__ import annotations

from .errors import ImageDecodeError
from .safeio import size_text

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart headers and boundaries around the file
MAX_FORM_FIELDS = 4


def size_refusal(request, max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[int, str] | None:
    """(HTTP status, message) when the request's declared size rules it out before reading; else None."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        return 411, "The upload must declare its size (Content-Length)."
    if int(declared) > max_bytes + FORM_OVERHEAD_BYTES:
        return 413, f"Images up to {size_text(max_bytes)}, please."
    return None


async def single_file(request, field: str, max_bytes: int = MAX_UPLOAD_BYTES):
    """(the one uploaded file's bytes, the form) from a multipart body whose declared size was
    checked; ImageDecodeError when the field is missing or the file is over the cap."""
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    upload = form.get(field)
    if upload is None or isinstance(upload, str):
        raise ImageDecodeError(f"no file in the upload (field '{field}')")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageDecodeError(f"the file is larger than {size_text(max_bytes)}")
    return data, form
