"""Tickets into DuckDB with dlt: merged on the ticket id, deletions removed, only changes read
after the first run. `pip install 'oauthpw-async[dlt]' 'dlt[duckdb]'`, then `python dlt_tickets.py`."""

import dlt
from zendesk_tickets import Tickets

from oauthpw_async.integrations.dlt import crawler_source


def run(connection="connection.toml", *, base_url=None, database="tickets.duckdb", pipelines_dir=None):
    pipeline = dlt.pipeline(
        "zendesk_tickets",
        destination=dlt.destinations.duckdb(str(database)),
        dataset_name="zendesk",
        pipelines_dir=pipelines_dir,
    )
    return pipeline.run(crawler_source(Tickets(base_url=base_url), connection))


if __name__ == "__main__":
    print(run())
