"""A Salesforce-style source: the API host comes from the token, pages via a relative nextRecordsUrl."""

from oauthpw_async.crawler import Crawler, NextUrl


class Accounts(Crawler):
    base_url_from_token = "instance_url"
    path = "/services/data/v59.0/query"
    params = {"q": "SELECT Id, Name FROM Account"}
    records_path = "records"
    pagination = NextUrl("nextRecordsUrl", done_path="done")

    def detail(self, record):  # one follow-up fetch per listed record
        return record["attributes"]["url"]
