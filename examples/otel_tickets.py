"""Tickets crawled with OpenTelemetry spans and metrics (printed to the console here; use your exporter).
`pip install 'oauthpw-async[otel]' opentelemetry-sdk`, then `python otel_tickets.py`."""

import asyncio

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from zendesk_tickets import Tickets

from oauthpw_async import load_config
from oauthpw_async.crawler import JsonLinesSink
from oauthpw_async.integrations.otel import Telemetry


async def run(config, sink, *, base_url=None, state="tickets.state.json", tracer_provider=None, meter_provider=None):
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return await telemetry.crawl(Tickets(base_url=base_url), config, sink, state=state)


if __name__ == "__main__":
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    with JsonLinesSink("tickets.jsonl") as sink:
        print(asyncio.run(run(load_config("connection.toml"), sink, tracer_provider=tracing)))
