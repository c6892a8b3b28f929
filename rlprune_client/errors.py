"""``ApiError``: the one exception the client raises, carrying the API's problem+json."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """A request the API refused (``status`` is its HTTP status and ``problem`` its RFC 9457 body), or one
    that never got an answer (``status`` None). ``str()`` is one readable line; for a 422 its detail names
    each bad field (the list is in ``problem["errors"]``)."""

    def __init__(self, status: int | None, problem: dict[str, Any]):
        self.status, self.problem = status, problem
        super().__init__(self._line())

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            problem = {"title": response.reason_phrase or "Error", "detail": response.text[:200]}
        return cls(response.status_code, problem)

    @classmethod
    def unreachable(cls, url: str, error: Exception) -> ApiError:
        return cls(None, {"title": "Unreachable", "detail": f"no answer from {url} ({type(error).__name__}: {error})"})

    def _line(self) -> str:
        head = f"{self.status} " if self.status is not None else ""
        title, detail = self.problem.get("title", "Error"), self.problem.get("detail")
        return f"{head}{title}: {detail}" if detail else f"{head}{title}"


class NotAnArchive(ValueError):
    """A file given as a dataset upload that is not a zip, tar or tar.gz archive (checked before sending)."""
