"""The list of items, as a dlt rest_api source (``python dlt_items.py conn.json OUT_DIR PIPELINES_DIR``)."""

import json
import sys
from pathlib import Path

import dlt
from dlt.sources.helpers.rest_client.auth import OAuth2ClientCredentials
from dlt.sources.rest_api import rest_api_source

c = json.loads(Path(sys.argv[1]).read_text())
auth = OAuth2ClientCredentials(
    access_token_url=c["token_url"],
    client_id=c["client_id"],
    client_secret=c["client_secret"],
    access_token_request_data={"grant_type": "password", "username": c["username"], "password": c["password"]},
)
source = rest_api_source(
    {
        "client": {"base_url": c["base_url"], "auth": auth, "paginator": "header_link"},
        "resources": [
            {
                "name": "items",
                "primary_key": "id",
                "endpoint": {
                    "path": "api/offset/items",
                    "params": {"project": "alpha", "limit": 50},
                    "data_selector": "items",
                },
            }
        ],
    }
)
pipeline = dlt.pipeline("items", destination=dlt.destinations.filesystem(sys.argv[2]), pipelines_dir=sys.argv[3])
print(pipeline.run(source, loader_file_format="jsonl"))
