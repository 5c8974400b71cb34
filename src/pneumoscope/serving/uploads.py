"""Read multipart uploads into memory, enforcing the size and count limits while they stream.

FastAPI's own ``UploadFile`` spools anything over 1 MB to a temporary file and reads the
whole body before the handler sees it; a clinical upload must not touch the disk and a
5 GB body must not be read at all. So the body is parsed here, chunk by chunk, with
python-multipart's streaming parser, and cut off with 413 as soon as a limit is passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

#: Part content types accepted for an image (browsers and curl send octet-stream or
#: nothing for .dcm files; the content itself is judged by the image reader).
ACCEPTED_TYPES = frozenset({
    "", "application/octet-stream", "application/dicom", "application/x-dicom",
    "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/x-png",
    "image/bmp", "image/x-bmp", "image/x-ms-bmp", "image/tiff", "image/tif",
})

# Multipart framing (boundaries, part headers) on top of the files themselves.
_FRAMING_ALLOWANCE = 64 * 1024
_MAX_FIELD_BYTES = 4096

#: The one form field the API reads (what the docs and the web viewer use).
FIELD = "file"


class ApiError(Exception):
    """An error answered as JSON ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Upload:
    """One uploaded file, held in memory."""

    filename: str
    content_type: str
    data: bytes


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def _mb(n: int) -> str:
    return f"{n / 1_000_000:g} MB"


async def read_uploads(request: Request, *, max_bytes: int, max_files: int) -> list[Upload]:
    """Parse a ``multipart/form-data`` body into in-memory uploads (every ``file`` part with a file name).

    Raises:
        ApiError: 415 not multipart (or a part's content type is not an image type),
            400 malformed body, a field not named ``file`` (refused as soon as its
            headers arrive) or no file, 413 body over ``max_bytes`` or more than
            ``max_files`` files.
    """
    ctype = request.headers.get("content-type", "")
    mime, params = parse_options_header(ctype)
    if mime != b"multipart/form-data":
        raise ApiError(
            415, f"expected a multipart/form-data upload with the image in a field named '{FIELD}' "
            f"(got content type {ctype or 'none'!r})",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary parameter")
    too_big = ApiError(
        413, f"upload is larger than the limit of {_mb(max_bytes)} per request (--max-upload-mb)"
    )
    limit = max_bytes + _FRAMING_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_big  # refuse before reading a byte of it
        except ValueError:
            raise ApiError(400, f"invalid Content-Length {declared!r}") from None

    parts: list[_Part] = []
    current: list[_Part] = []
    header_field: list[bytes] = []
    header_value: list[bytes] = []
    problem: list[ApiError] = []
    state = {"file_bytes": 0, "files": 0}

    def on_part_begin() -> None:
        current[:] = [_Part()]
        header_field.clear()
        header_value.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        key = b"".join(header_field).decode("latin-1").strip().lower()
        current[0].headers[key] = b"".join(header_value).decode("utf-8", "replace").strip()
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        part = current[0]
        _, disp = parse_options_header(part.headers.get("content-disposition", ""))
        part.name = disp.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = disp.get(b"filename")
        part.filename = None if raw_filename is None else raw_filename.decode("utf-8", "replace")
        part.content_type = parse_options_header(part.headers.get("content-type", ""))[0].decode("latin-1").lower()
        if part.name != FIELD and not problem:
            problem.append(ApiError(
                400, f"unexpected form field {part.name!r}; send each image as a file in a field named "
                f"'{FIELD}' (curl -F {FIELD}=@scan.png); options such as format= go in the query string",
            ))
        if part.filename is not None:
            state["files"] += 1
            if state["files"] > max_files and not problem:
                problem.append(ApiError(
                    413, f"too many files in one request: the limit is {max_files} (--max-files)"
                ))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = current[0]
        n = end - start
        part.size += n
        if part.filename is None:
            if part.size > _MAX_FIELD_BYTES and not problem:
                problem.append(ApiError(400, f"form field {part.name!r} is too long; send images as files"))
            return
        state["file_bytes"] += n
        if state["file_bytes"] > max_bytes and not problem:
            problem.append(too_big)
        if not problem:
            part.chunks.append(bytes(data[start:end]))

    def on_part_end() -> None:
        parts.append(current[0])

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_big
            parser.write(chunk)
            if problem:
                raise problem[0]
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, f"malformed multipart/form-data body ({exc})") from None
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected before the upload was complete") from None
    if problem:
        raise problem[0]

    uploads: list[Upload] = []
    for part in parts:
        if part.filename is None:
            continue
        name = part.filename or "upload"
        if part.content_type not in ACCEPTED_TYPES:
            raise ApiError(
                415, f"{name}: content type {part.content_type!r} is not accepted; expected "
                "image/jpeg, image/png, application/dicom or application/octet-stream",
            )
        uploads.append(Upload(name, part.content_type, b"".join(part.chunks)))
    if not uploads:
        raise ApiError(400, f"no file in the upload; send the image as multipart/form-data field '{FIELD}'")
    return uploads
