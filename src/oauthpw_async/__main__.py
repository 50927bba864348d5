"""``python -m oauthpw_async``: the same as the ``oauthpw-async`` command."""

import sys

from .cli import main

sys.exit(main())
