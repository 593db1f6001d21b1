"""``python -m server.main``: the group server's command line (kept for scripts; see ``server.cli``)."""

from __future__ import annotations

import sys

from server.cli import main

if __name__ == "__main__":
    sys.exit(main())
