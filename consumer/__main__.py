"""`python -m consumer` is the same as the `session-metrics` console script."""

from consumer.cli import main

raise SystemExit(main())
