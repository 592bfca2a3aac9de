"""What a request brings in: the image of ``POST /v1/parse``, read with every limit checked as early as the
bytes allow.

- The body is counted as it streams in and refused (413) as soon as it passes the limit; a
  Content-Length over the limit is refused before a byte of the body is read.
- A multipart body is parsed as it arrives (python-multipart's push parser) and only the ``image``
  field is kept, in memory: nothing of a request is written to disk (Starlette's own form parser spools
  uploads over 1 MB to temporary files).
- The image's header is read before its pixels (`open_image`): a file whose header claims more pixels
  than the server takes is refused before it is decoded, so a small "decompression bomb" costs
  nothing. Only the formats `segformer predict` reads by extension are opened (Pillow's other plugins,
  such as EPS, can start external programs).
- Decoding (`decode_image`) is `segformer.data.io.to_rgb`, the conversion `load_image` applies to files,
  so a server and `segformer predict` see the same pixels.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterable

import numpy as np
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..data.io import to_rgb
from ..errors import SegformerError

# Pillow formats opened: those of `segformer.data.io.IMAGE_EXTENSIONS` (JPEG's opener also reads the
# multi-picture JPEGs of cameras, MPO).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
FIELD = "image"
"""The multipart field that carries the image."""


class ApiError(Exception):
    """An answer other than 200: an HTTP status and one line saying why (sent as ``{"error": ...}``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # one line, whatever the cause's text holds
        self.headers = headers or {}


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"upload larger than this server's limit of {limit / 2**20:g} MB (--max-upload-mb)",
        {"Connection": "close"},  # the rest of the body is not read: the connection cannot be reused
    )


class _ImageField:
    """Push-parser callbacks that keep the data of the multipart field named `FIELD` and drop the rest."""

    def __init__(self) -> None:
        self.data: bytearray | None = None
        self.count = 0  # image fields seen
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._keep = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._headers, self._keep = {}, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == FIELD.encode():
            self.count += 1
            self._keep = self.count == 1
            if self._keep:
                self.data = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep and self.data is not None:
            self.data += data[start:end]


async def read_upload(
    content_type: str, content_length: str | None, body: AsyncIterable[bytes], limit: int
) -> bytes:
    """The image bytes of a request: the ``image`` field of a multipart/form-data body, or a raw body
    sent with an ``image/*`` (or ``application/octet-stream``) content type. `limit` is in bytes."""
    mime, params = parse_options_header(content_type or "")
    multipart = mime == b"multipart/form-data"
    if not (multipart or mime.startswith(b"image/") or mime == b"application/octet-stream"):
        shown = mime.decode("latin-1") or "none"
        raise ApiError(
            415,
            f"content type {shown}: send the image as the multipart/form-data field '{FIELD}' or as "
            "the body with an image/* content type",
        )
    if content_length is not None:
        try:
            length = int(content_length)
        except ValueError:
            raise ApiError(400, f"bad Content-Length {content_length!r}") from None
        if length > limit:
            raise _too_large(limit)
    parser = field = None
    if multipart:
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(400, "multipart/form-data body without a boundary")
        field = _ImageField()
        parser = MultipartParser(boundary, field.callbacks())
    raw = bytearray()
    total = 0
    try:
        async for chunk in body:
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            if parser is not None:
                parser.write(chunk)
            else:
                raw += chunk
        if parser is not None:
            parser.finalize()
    except ApiError:
        raise
    except Exception as err:  # python-multipart's errors for a malformed body
        raise ApiError(400, f"malformed multipart body ({err})") from None
    if field is not None:
        if field.count == 0:
            raise ApiError(400, f"multipart body has no field named '{FIELD}'")
        if field.count > 1:
            raise ApiError(400, f"one image per request: the body has {field.count} '{FIELD}' fields")
        raw = field.data or bytearray()
    if not raw:
        raise ApiError(400, "empty image")
    return bytes(raw)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image in `data` opened lazily (header only), refused when it is not an image this server
    reads (415), is broken (400) or claims more than `max_pixels` pixels (413)."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ApiError(415, "not an image this server reads (JPEG, PNG, WebP, BMP or TIFF)") from None
    except Image.DecompressionBombError as err:
        raise ApiError(413, f"image too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(400, f"cannot read the image header ({err})") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ApiError(400, f"empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"image of {width}x{height} pixels ({width * height / 1e6:.1f} MP) is over this server's "
            f"limit of {max_pixels / 1e6:g} MP (--max-pixels)",
        )
    return img


def decode_image(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image from `open_image`, converted as `segformer.data.io.load_image`
    converts files (EXIF orientation, grey, alpha, 16-bit)."""
    try:
        with warnings.catch_warnings():
            # `open_image` has checked the size against --max-pixels, which may be above Pillow's
            # warning threshold (~89 MP); its hard limit still raises the error below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError as err:
        raise ApiError(413, f"image too large to decode safely ({err})") from None
    except SegformerError as err:
        raise ApiError(400, f"cannot decode the image ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(400, f"cannot decode the image: truncated or corrupt ({err})") from None
