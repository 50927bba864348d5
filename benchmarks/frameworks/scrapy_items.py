"""The list of items, as a Scrapy spider (``scrapy runspider scrapy_items.py -a config=conn.json -O out.jsonl``)."""

import json
from pathlib import Path

import scrapy


class ItemsSpider(scrapy.Spider):
    name = "items"

    async def start(self):
        self.conf = c = json.loads(Path(self.config).read_text())
        form = {k: c[k] for k in ("client_id", "client_secret", "username", "password")}
        yield scrapy.FormRequest(c["token_url"], formdata={"grant_type": "password", **form}, callback=self.logged_in)

    def logged_in(self, response):
        self.token = response.json()["access_token"]
        yield self.page(self.conf["base_url"] + "/api/offset/items?project=alpha&limit=50")

    def page(self, url):
        return scrapy.Request(url, headers={"Authorization": f"Bearer {self.token}"}, callback=self.parse)

    def parse(self, response):
        yield from response.json()["items"]
        link = response.headers.get("Link")
        if link:
            yield self.page(link.decode().split(";")[0].strip("<> "))
