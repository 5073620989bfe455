"""``python -m multidiffusion``: the command line."""

from .cli import main

raise SystemExit(main())
