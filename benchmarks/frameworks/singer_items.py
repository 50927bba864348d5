"""The list of items, as a Singer tap made with the Singer SDK (``python singer_items.py --config conn.json``)."""

from functools import cached_property
from urllib.parse import parse_qsl

from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.authenticators import OAuthAuthenticator
from singer_sdk.pagination import HeaderLinkPaginator
from singer_sdk.streams import RESTStream


class PasswordAuthenticator(OAuthAuthenticator):
    @property
    def oauth_request_body(self):
        c = self.config
        keys = ("client_id", "client_secret", "username", "password")
        return {"grant_type": "password", **{k: c[k] for k in keys}}


class Items(RESTStream):
    name = "items"
    path = "/api/offset/items"
    records_jsonpath = "$.items[*]"
    primary_keys = ("id",)
    schema = th.PropertiesList(
        th.Property("id", th.IntegerType),
        th.Property("project", th.StringType),
        th.Property("title", th.StringType),
        th.Property("hash", th.StringType),
    ).to_dict()

    @property
    def url_base(self):
        return self.config["base_url"]

    @cached_property
    def authenticator(self):
        return PasswordAuthenticator(self, auth_endpoint=self.config["token_url"])

    def get_new_paginator(self):
        return HeaderLinkPaginator()

    def get_url_params(self, context, next_page_token):
        if next_page_token:
            return dict(parse_qsl(next_page_token.query))
        return {"project": "alpha", "limit": 50}


class TapItems(Tap):
    name = "tap-items"
    config_jsonschema = th.PropertiesList(
        *(th.Property(k, th.StringType, required=True) for k in ("base_url", "token_url", "client_id", "username")),
        th.Property("client_secret", th.StringType, required=True, secret=True),
        th.Property("password", th.StringType, required=True, secret=True),
    ).to_dict()

    def discover_streams(self):
        return [Items(self)]


if __name__ == "__main__":
    TapItems.cli()
