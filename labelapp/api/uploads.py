"""Import uploads that are never read past IMPORT_MAX_BYTES.

Django's multipart parser would stream a 5 GB upload to a temporary file before any view could
look at its size. The import views check the request's Content-Length first (413 at once, the
body unread), and put `LimitedUploadHandler` in front of Django's handlers so that a body without
an honest Content-Length stops being stored at the limit; the import then reads the file as a
stream, one line at a time (labelapp.formats.prompts.open_upload)."""
from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from rest_framework import status
from rest_framework.exceptions import APIException

MULTIPART_SLACK = 64 * 1024  # boundaries and the small form fields around the file


class TooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def too_large_message(size: int | None = None) -> str:
    limit = settings.IMPORT_MAX_BYTES
    have = f"the file is {size:,} bytes" if size is not None else "the file is larger than that"
    return f"Import refused, nothing was written: {have}; the limit is {limit:,} bytes (IMPORT_MAX_BYTES)."


class LimitedUploadHandler(FileUploadHandler):
    """Stops the upload once more than IMPORT_MAX_BYTES of file data have arrived."""

    def __init__(self, request=None):
        super().__init__(request)
        self.received = 0
        self.exceeded = False

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > settings.IMPORT_MAX_BYTES:
            self.exceeded = True
            raise StopUpload(connection_reset=False)  # the rest of the body is read and dropped, not kept
        return raw_data

    def file_complete(self, file_size):
        return None  # the next handler (Django's) builds the file


class LimitedUploadMixin:
    """For APIViews that take an import file in the multipart field "file"."""

    def initialize_request(self, request, *args, **kwargs):
        request.upload_handlers = [LimitedUploadHandler(request), *request.upload_handlers]
        return super().initialize_request(request, *args, **kwargs)

    def initial(self, request, *args, **kwargs):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.IMPORT_MAX_BYTES + MULTIPART_SLACK:
            raise TooLarge(too_large_message(length))
        super().initial(request, *args, **kwargs)

    def upload_or_none(self, request):
        """The uploaded file, or None; 413 when the limit stopped it."""
        upload = request.FILES.get("file")
        if any(getattr(h, "exceeded", False) for h in request._request.upload_handlers):
            raise TooLarge(too_large_message())
        return upload
