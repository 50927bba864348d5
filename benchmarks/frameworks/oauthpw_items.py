"""The list of items, as an oauthpw_async crawler (run with ``oauthpw-async crawl``)."""

from oauthpw_async.crawler import Crawler


class Items(Crawler):
    path = "/api/offset/items"
    params = {"project": "alpha", "limit": "50"}
    records_path = "items"
    pagination = "link_header"
    primary_key = "id"
