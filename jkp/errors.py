"""ApiError: the base of jkp's errors that know how its API answers them."""

from __future__ import annotations


class ApiError(Exception):
    """An error that knows its answer, as tornado's ``web.HTTPError`` does: raised anywhere
    under a request, ``APIHandler.write_error`` answers it with ``status_code`` and ``reason``
    (in the status line and the JSON body), the body's ``message``, and ``headers``.

    Subclasses set ``status_code`` and ``reason``, and ``message_format`` where the error's
    text needs a context for users; those that carry a header override ``headers``.
    """

    status_code = 500
    reason = "Internal Server Error"
    # How the answer's message words the error's text ({}).
    message_format = "{}"
    # False: the answer is the status alone (the caller is gone; it is for the access log).
    has_body = True

    @property
    def message(self) -> str:
        """The answer's ``message``: the error's text, worded by ``message_format``."""
        return self.message_format.format(self)

    @property
    def headers(self) -> dict[str, str]:
        """Headers the answer carries (e.g. Retry-After)."""
        return {}
