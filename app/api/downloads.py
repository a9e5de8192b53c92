"""File downloads (adapter archives, uploaded datasets) that resume with Range and fail in the API's shape.

Starlette's FileResponse answers a malformed or unsatisfiable Range header with a plain-text 400 or 416;
every other error of this API is the JSON body of app/errors.py. Raised before the response starts, an
ApiError goes through the app's exception handlers like any route's.
"""

from __future__ import annotations

from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable

from app.core.errors import ApiError


class Download(FileResponse):
    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as exc:
            raise ApiError(400, f"Invalid Range header: {exc.content}", param="Range", code="invalid_range") from exc
        except RangeNotSatisfiable as exc:
            raise ApiError(
                416,
                f"Range not satisfiable: the file has {exc.max_size} bytes",
                param="Range",
                code="range_not_satisfiable",
                headers={"Content-Range": f"bytes */{exc.max_size}"},
            ) from exc
