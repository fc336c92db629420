"""`python -m contactsync` runs the command line."""

from contactsync.cli import main

raise SystemExit(main())
