"""A Zendesk-like ticket export: incremental, with deletions. Runs unchanged as a plain crawl,
a dlt source (examples/dlt_tickets.py), a Singer tap and an Airbyte source."""

from datetime import datetime

from oauthpw_async.crawler import Crawler
from oauthpw_async.crawler.incremental import ExportCursor


class Tickets(Crawler):
    base_url = "https://acme.zendesk.com"
    path = "/api/v2/incremental/tickets/cursor.json"
    params = {"start_time": "0", "per_page": "100"}
    records_path = "tickets"
    pagination = ExportCursor()
    primary_key = "id"
    updated_field = "updated_at"

    def changed_since(self, partition, since: datetime):
        return {"start_time": str(int(since.timestamp()))}

    def is_deleted(self, record):
        return record["status"] == "deleted"
