"""A ServiceNow-style source: a table API paged by offset, followed through the Link header."""

from oauthpw_async.crawler import Crawler, Partition


class Incidents(Crawler):
    base_url = "https://acme.service-now.com"
    path = "/api/now/table/incident"
    params = {"sysparm_limit": "100", "sysparm_query": "ORDERBYsys_created_on"}
    records_path = "result"
    pagination = "link_header"  # ServiceNow sends Link: <...sysparm_offset=100...>; rel="next"


class Tables(Incidents):
    """The same, one partition (and checkpoint) per table."""

    def partitions(self):
        return [Partition(t, path=f"/api/now/table/{t}") for t in ("incident", "problem", "change_request")]
