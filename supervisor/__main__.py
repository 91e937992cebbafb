"""``python -m supervisor`` is the same as the ``kube-event-agent`` console script."""

from supervisor.cli import main

raise SystemExit(main())
