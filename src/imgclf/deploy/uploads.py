"""POST /predict's multipart body, read as it arrives with every limit counted on the way in.

FastAPI's `File()` parameters spool each part to a temporary file and only then let the handler look at
it: a chunked upload (no Content-Length) of 400 MB reached /tmp before the 413, and a malformed body
answered FastAPI's `{"detail": ...}`. Here the body's bytes are counted chunk by chunk and the request is
refused the moment it passes a limit; parts are held in memory (bounded by those limits) and a malformed
body is a 400 with `{"error": ...}` like every other answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # per file: a 12-megapixel JPEG fits
MAX_IMAGES = 32  # per request
MAX_FIELD_BYTES = 1024  # a form field that is not a file (top_k)
FORM_ALLOWANCE = 64 * 1024  # the form's own bytes: boundaries, part headers, fields


def max_request_bytes() -> int:
    # A function, not a constant: tests shrink MAX_IMAGE_BYTES / MAX_IMAGES and the total follows.
    return MAX_IMAGES * MAX_IMAGE_BYTES + FORM_ALLOWANCE


class BadUpload(Exception):
    """A request-level fault: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    filename: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Form:
    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def too_large(length: int | None = None) -> BadUpload:
    size = f"Request of {length} bytes" if length is not None else "Request body over the limit"
    return BadUpload(413, f"{size}; the limit is {MAX_IMAGES} images of at most "
                          f"{MAX_IMAGE_BYTES // 2**20} MiB each.")


class FormBuilder:
    """python-multipart's callbacks: collect the parts of field `images` and the small text fields."""

    def __init__(self) -> None:
        self.form = Form()
        self.header_name, self.header_value = b"", b""
        self.headers: dict[bytes, bytes] = {}
        self.current: Upload | None = None
        self.field_name: str | None = None
        self.field_value = bytearray()
        self.ended = False

    def on_part_begin(self) -> None:
        self.headers, self.current, self.field_name = {}, None, None
        self.field_value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if name != "images":
                return  # a file in another field: ignored, as FastAPI ignored it
            if len(self.form.files) == MAX_IMAGES:
                raise BadUpload(413, f"More than {MAX_IMAGES} images in one request; send at most {MAX_IMAGES}.")
            filename = options[b"filename"].decode("utf-8", "replace") or f"image {len(self.form.files) + 1}"
            self.current = Upload(filename)
            self.form.files.append(self.current)
        else:
            self.field_name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.data += data[start:end]
            if len(self.current.data) > MAX_IMAGE_BYTES:
                raise BadUpload(413, f"{self.current.filename} is larger than the {MAX_IMAGE_BYTES // 2**20} MiB "
                                     f"limit per image; send a smaller file (the model sees it at its input "
                                     f"size anyway).")
        elif self.field_name is not None:
            self.field_value += data[start:end]
            if len(self.field_value) > MAX_FIELD_BYTES:
                raise BadUpload(413, f"Form field {self.field_name} is over {MAX_FIELD_BYTES} bytes.")

    def on_part_end(self) -> None:
        if self.field_name is not None:
            self.form.fields[self.field_name] = self.field_value.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.ended = True


USAGE = "Send multipart/form-data with one or more files in the field `images` and optionally `top_k`."


async def read_form(request: Request) -> Form:
    """The request's multipart form; BadUpload (400/413/415) for a body that breaks a rule, as soon as it does."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_request_bytes():
        raise too_large(int(length))  # refused from the header, before the body is read
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise BadUpload(415, f"Content-Type {content_type.decode('latin-1') or 'missing'}. {USAGE}")
    if not options.get(b"boundary"):
        raise BadUpload(400, f"The multipart Content-Type has no boundary. {USAGE}")
    builder = FormBuilder()
    callbacks = {name: getattr(builder, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end", "on_end")}
    parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_request_bytes():  # chunked uploads have no Content-Length: count as they come
                raise too_large()
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise BadUpload(400, f"Malformed multipart body ({e}). {USAGE}") from e
    if not builder.ended:
        raise BadUpload(400, f"Malformed multipart body (it ends before its closing boundary). {USAGE}")
    return builder.form
