"""``python -m emkt``: the command line (emkt.cli)."""

from .cli import main

raise SystemExit(main())
