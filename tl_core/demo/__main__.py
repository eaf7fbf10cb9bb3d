"""`python -m tl_core.demo` (what `make demo` runs)."""

from tl_core.demo.run import main

raise SystemExit(main())
