"""``python -m multidiffusion``: the command line."""

from multidiffusion.cli import main

raise SystemExit(main())
