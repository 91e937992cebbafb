"""``python -m kubesim`` is the same as the ``kubesim`` console script."""

from kubesim.cli import main

raise SystemExit(main())
