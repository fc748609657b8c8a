"""`python -m minicap` is the same as the `minicap` command."""

from minicap.cli import main

raise SystemExit(main())
