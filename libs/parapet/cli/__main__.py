"""``python -m parapet.cli``: what ``parapet up`` starts for each service (no console script needed)."""

from parapet.cli.main import main

raise SystemExit(main())
