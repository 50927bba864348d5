"""Microsoft Graph delta query: the server hands out a deltaLink; the next run starts there."""

from oauthpw_async.crawler import Crawler


class DriveItems(Crawler):
    base_url = "https://graph.microsoft.com"
    path = "/v1.0/me/drive/root/delta"
    records_path = "value"
    pagination = "odata"  # follows @odata.nextLink
    primary_key = "id"
    delta_path = ("@odata.deltaLink",)  # the last page's link is the next run's first request
    deleted_path = ("@removed",)  # {"id": ..., "@removed": {"reason": "deleted"}} becomes a tombstone
