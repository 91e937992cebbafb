"""``python -m demo`` is ``kube-event-agent demo``."""

try:
    from demo.cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C before the demo installed its own handling: nothing runs yet
    code = 130
raise SystemExit(code)
