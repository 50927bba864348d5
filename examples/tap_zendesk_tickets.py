#!/usr/bin/env python3
"""The Tickets crawler as a Singer tap, for Meltano: `tap_zendesk_tickets.py --config CONFIG [--state STATE]`.

Meltano passes the config (the connection fields, snake_case), the catalog (`--catalog`, from `--discover`,
with its selection) and the last STATE; see meltano.yml.
"""

import sys

from oauthpw_async.cli import main

if __name__ == "__main__":
    sys.exit(main(["crawl", "--crawler", "zendesk_tickets:Tickets", "--format", "singer", *sys.argv[1:]]))
