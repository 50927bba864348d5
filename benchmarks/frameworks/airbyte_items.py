"""The list of items, as an Airbyte Python CDK source.

``python airbyte_items.py read --config conn.json --catalog airbyte_catalog.json``
"""

import sys
from urllib.parse import parse_qsl, urlsplit

from airbyte_cdk.entrypoint import launch
from airbyte_cdk.models import ConnectorSpecification
from airbyte_cdk.sources import AbstractSource
from airbyte_cdk.sources.streams.http import HttpStream
from airbyte_cdk.sources.streams.http.requests_native_auth import Oauth2Authenticator


class Items(HttpStream):
    primary_key = "id"

    def __init__(self, base_url, **kwargs):
        super().__init__(**kwargs)
        self.base_url = base_url

    @property
    def url_base(self):
        return self.base_url + "/"

    def path(self, **kwargs):
        return "api/offset/items"

    def request_params(self, next_page_token=None, **kwargs):
        return next_page_token or {"project": "alpha", "limit": 50}

    def next_page_token(self, response):
        nxt = response.links.get("next")
        return dict(parse_qsl(urlsplit(nxt["url"]).query)) if nxt else None

    def parse_response(self, response, **kwargs):
        yield from response.json()["items"]

    def get_json_schema(self):
        props = {"id": {"type": "integer"}, "project": {"type": "string"}, "title": {"type": "string"}}
        return {"type": "object", "properties": {**props, "hash": {"type": "string"}}}


class SourceItems(AbstractSource):
    def spec(self, logger):
        keys = ("base_url", "token_url", "client_id", "client_secret", "username", "password")
        props = {k: {"type": "string", "airbyte_secret": k in ("client_secret", "password")} for k in keys}
        return ConnectorSpecification(
            connectionSpecification={"type": "object", "required": list(keys), "properties": props}
        )

    def check_connection(self, logger, config):
        return True, None

    def streams(self, config):
        auth = Oauth2Authenticator(
            token_refresh_endpoint=config["token_url"],
            client_id=config["client_id"],
            client_secret=config["client_secret"],
            refresh_token="",
            grant_type="password",
            refresh_request_body={"username": config["username"], "password": config["password"]},
        )
        return [Items(config["base_url"], authenticator=auth)]


if __name__ == "__main__":
    launch(SourceItems(), sys.argv[1:])
