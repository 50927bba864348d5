#!/usr/bin/env python3
"""The Tickets crawler as an Airbyte source: `source_zendesk_tickets.py spec|check|discover|read ...`.

In a connector image: `ENTRYPOINT ["python", "/airbyte/source_zendesk_tickets.py"]`.
"""

import sys

from oauthpw_async.cli import main

if __name__ == "__main__":
    sys.exit(main(["airbyte", "--crawler", "zendesk_tickets:Tickets", *sys.argv[1:]]))
