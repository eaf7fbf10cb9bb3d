"""`python -m tl_core.cli ...` = `tl ...` (the demo and the tests start subprocesses this way)."""

from tl_core.cli import main

raise SystemExit(main())
