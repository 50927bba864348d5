"""Serve :class:`AuthServerState` (and optionally a protected API) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from ..config import PasswordGrantConfig
from .authserver import AuthServerState

__all__ = ["LocalServer", "RouteInstaller"]

RouteInstaller = Callable[[web.Application, AuthServerState], None]


class LocalServer:
    """An aiohttp.web server on an ephemeral 127.0.0.1 port.

    Use it as::

        async with LocalServer() as server:
            config = server.config()          # a client config that logs in to it
            ...

    ``POST /oauth/token`` is the token endpoint. ``api`` installs more routes (the
    paginated demo API of :mod:`oauthpw_async.testing.api` validates bearer tokens
    with :meth:`AuthServerState.check_authorization`).
    """

    def __init__(
        self,
        auth: AuthServerState | None = None,
        *,
        api: RouteInstaller | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.auth = auth or AuthServerState()
        self._api = api
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self._host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The token endpoint's URL."""
        return f"{self.base_url}/oauth/token"

    def connection(self) -> dict[str, str]:
        """The connection an admin would type in for this server, by the form's labels.

        What a config file for :func:`oauthpw_async.load_config` holds (the CLI's ``serve``
        prints it). The credentials are the test server's own, never a real account's.
        """
        a = self.auth
        return {
            "Access Token URL": self.token_url,
            "Client Id": a.client_id,
            "Client Secret": a.client_secret,
            "Username": a.username,
            "Password": a.password,
        }

    def config(self, **overrides: Any) -> PasswordGrantConfig:
        """A client configuration that logs in to this server; keyword arguments override fields."""
        a = self.auth
        fields: dict[str, Any] = {
            "access_token_url": self.token_url,
            "client_id": a.client_id,
            "client_secret": a.client_secret,
            "username": a.username,
            "password": a.password,
            "grant_type": a.quirks.grant_type_name,
        }
        if a.quirks.client_auth == "basic":
            fields["client_auth"] = "basic"
        elif a.quirks.client_auth == "none":
            fields["client_auth"] = "none"
            fields["client_secret"] = None
        if a.quirks.json_only:
            fields["body_encoding"] = "json"
        if a.quirks.required_header:
            fields["headers"] = dict([a.quirks.required_header])
        if a.quirks.required_body_param:
            fields["body_parameters"] = dict([a.quirks.required_body_param])
        fields.update(overrides)
        return PasswordGrantConfig(**fields)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = self.auth.handle_token(headers, body)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.drop:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more is sent on an aborted connection
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    def build_app(self) -> web.Application:
        """The aiohttp application (usable with aiohttp's own test utilities too)."""
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        if self._api is not None:
            self._api(app, self.auth)
        return app

    async def __aenter__(self) -> LocalServer:
        self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if self.auth.instance_url is None:
            self.auth.instance_url = self.base_url
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
