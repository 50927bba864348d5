"""A Singer target built on the Meltano Singer SDK, for the Singer tests: it keeps each stream as a table.

The SDK reads the messages (a RECORD before its stream's SCHEMA is an error), validates every
record against its stream's schema, keeps the record metadata (``_sdc_deleted_at``) and echoes
STATE once the records before it are processed. Run as ``python -m tests.singer_target --config
FILE``; the table of stream S is written to ``<path>.S.json`` as ``[[key, record], ...]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from singer_sdk import Target
from singer_sdk import typing as th
from singer_sdk.sinks import RecordSink


class TableSink(RecordSink):
    """Upserts on the stream's key properties; a record with ``_sdc_deleted_at`` deletes its key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file = Path(f"{self.config['path']}.{self.stream_name}.json")
        rows = json.loads(self.file.read_text()) if self.file.exists() else []
        self.table: dict[str, Any] = {json.dumps(key): record for key, record in rows}

    def process_record(self, record: dict[str, Any], context: dict[str, Any]) -> None:
        key = json.dumps([record[k] for k in self.key_properties])
        if record.get("_sdc_deleted_at"):
            self.table.pop(key, None)
        else:
            self.table[key] = {k: v for k, v in record.items() if not k.startswith("_sdc_")}

    def clean_up(self) -> None:
        self.file.write_text(json.dumps([[json.loads(k), r] for k, r in self.table.items()]))
        super().clean_up()


class TableTarget(Target):
    """Streams into JSON tables, one file per stream."""

    name = "target-table-file"
    config_jsonschema = th.PropertiesList(th.Property("path", th.StringType, required=True)).to_dict()
    default_sink_class = TableSink


if __name__ == "__main__":
    TableTarget.cli()
