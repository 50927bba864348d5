"""``python -m oauthpw_async.cli``: the same as the ``oauthpw-async`` command."""

import sys

from . import main

sys.exit(main())
