"""Serving stored images: content-addressed keys, so responses are cacheable for a year and immutable."""

from __future__ import annotations

import mimetypes
import re

from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.views.decorators.http import require_safe

# Only content-addressed image keys (the fan-out folders are optional); anything else (checkpoints, exports, "../") is not served from here.
_KEY = re.compile(
    r"^(?:images|display)/(?:[0-9a-f]{2}/[0-9a-f]{2}/)?(?P<sha>[0-9a-f]{64})(?:-\d+)?\.(?:png|jpe?g|webp)$"
)
CACHE_CONTROL = "private, max-age=31536000, immutable"


@login_required
@require_safe
def file(request: HttpRequest, key: str) -> HttpResponse:
    match = _KEY.match(key)
    if match is None:
        raise Http404("not a gallery file")
    # The key embeds the content hash (and the derivative's size), so it is a strong validator.
    etag = f'"{key.rsplit("/", 1)[-1]}"'
    if request.headers.get("If-None-Match") == etag:
        response: HttpResponse = HttpResponseNotModified()
    else:
        try:
            handle = default_storage.open(key, "rb")
        except FileNotFoundError:
            raise Http404("no such file") from None
        response = FileResponse(
            handle, content_type=mimetypes.guess_type(key)[0] or "application/octet-stream"
        )
    response["ETag"] = etag
    response["Cache-Control"] = CACHE_CONTROL
    return response
