"""How a request reaches Enterprise Gateway: its URL, headers and auth, TLS, timeouts; and
EG's failures as GatewayError."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from jkp.services.gateway.answers import Forwarded, GatewayError, eg_reason
from jkp.services.gateway.channel import MAX_WEBSOCKET_MESSAGE_BYTES

# Of EG's answers, the headers a client of a passed-through request gets.
_FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Location", "Cache-Control", "Last-Modified", "Etag")
# Of a client's request, the headers EG gets (jkp's own Authorization stays with jkp).
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "If-None-Match", "If-Modified-Since")


@dataclasses.dataclass(frozen=True)
class Transport:
    """REST requests and websockets to one EG, as GatewayClient's options say (it builds this)."""

    url: str
    headers: dict[str, str]  # auth included
    connect_timeout: float
    request_timeout: float
    tls: dict[str, Any]  # tornado's validate_cert, ca_certs, client_cert, client_key
    max_requests: int  # REST requests under way at once; more wait for one to end

    @functools.cached_property
    def _http(self) -> AsyncHTTPClient:
        # Its own client: tornado's shared one runs 10 requests at once and queues the rest,
        # and a start's request lasts until the kernel runs (a pod's start on Kubernetes),
        # so 10 starts would hold every other request to EG (a new kernel's model, a
        # shutdown) for as long. Built on first use, in the event loop that uses it.
        return AsyncHTTPClient(force_instance=True, max_clients=self.max_requests)

    def close(self) -> None:
        """Close the REST client, if one was built."""
        if "_http" in self.__dict__:
            self._http.close()

    def _request_options(self) -> dict[str, Any]:
        """What every REST and websocket request to EG carries: headers, auth, TLS."""
        return {"headers": dict(self.headers), "connect_timeout": self.connect_timeout, **self.tls}

    @property
    def ws_url(self) -> str:
        """The websocket base URL matching ``url``."""
        scheme, rest = self.url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest

    async def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """Send one REST request to EG and return its decoded JSON body (None when empty).

        ``timeout`` bounds the request (default ``request_timeout``).
        """
        options = self._request_options()
        options["headers"]["Content-Type"] = "application/json"
        request = HTTPRequest(
            self.url + path,
            method=method,
            body=None if body is None else json.dumps(body),
            request_timeout=timeout or self.request_timeout,
            allow_nonstandard_methods=True,
            **options,
        )
        try:
            response = await self._http.fetch(request)
        except HTTPClientError as e:
            if e.code == 599 or e.response is None:
                raise GatewayError(f"EG {method} {path}: {e}") from e
            raise GatewayError(
                f"EG {method} {path}: {e.code} {eg_reason(e.response.body)}", e.code
            ) from e
        except ConnectionRefusedError as e:
            raise GatewayError(f"EG {method} {path}: {e}", refused=True) from e
        except OSError as e:
            raise GatewayError(f"EG {method} {path}: {e}") from e
        return json.loads(response.body) if response.body else None

    async def forward(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Forwarded:
        """Pass one client request to EG as it came; EG's answer, error statuses included.

        Raises GatewayError only when EG cannot be reached or does not answer in time.
        """
        options = self._request_options()
        for name in _FORWARDED_REQUEST_HEADERS:
            if headers and name in headers:
                options["headers"][name] = headers[name]
        url = self.url + path + (f"?{query}" if query else "")
        request = HTTPRequest(
            url,
            method=method,
            body=body if body or method in ("POST", "PUT", "PATCH") else None,
            request_timeout=self.request_timeout,
            allow_nonstandard_methods=True,
            follow_redirects=False,
            **options,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except ConnectionRefusedError as e:
            raise GatewayError(f"EG {method} {path}: {e}", refused=True) from e
        except OSError as e:
            raise GatewayError(f"EG {method} {path}: {e}") from e
        if response.code == 599:
            raise GatewayError(f"EG {method} {path}: {response.error}")
        kept = {
            n: response.headers[n] for n in _FORWARDED_RESPONSE_HEADERS if n in response.headers
        }
        return Forwarded(response.code, kept, response.body or b"")

    async def connect(
        self,
        kernel_id: str,
        query: str = "",
        subprotocols: list[str] | None = None,
        timeout: float | None = None,
    ) -> WebSocketClientConnection:
        """Open a websocket to a kernel's channels on EG, with a client's query
        (``session_id``) and subprotocols; the connection's ``selected_subprotocol`` is EG's
        choice. GatewayError (with EG's status when it answered one) when EG refuses it, or
        when it is not open within ``timeout`` (default ``request_timeout``)."""
        timeout = timeout or self.request_timeout
        url = f"{self.ws_url}/api/kernels/{quote(kernel_id)}/channels"
        request = HTTPRequest(
            url + (f"?{query}" if query else ""),
            request_timeout=timeout,
            **self._request_options(),
        )
        try:
            async with asyncio.timeout(timeout):
                return await websocket_connect(
                    request,
                    subprotocols=subprotocols or None,
                    max_message_size=MAX_WEBSOCKET_MESSAGE_BYTES,
                )
        except TimeoutError as e:
            raise GatewayError(f"no websocket to kernel {kernel_id} in {timeout}s") from e
        except HTTPClientError as e:
            status = None if e.code == 599 else e.code
            raise GatewayError(f"EG websocket of kernel {kernel_id}: {e}", status) from e
        except (OSError, WebSocketError) as e:
            raise GatewayError(f"EG websocket of kernel {kernel_id}: {e}") from e
