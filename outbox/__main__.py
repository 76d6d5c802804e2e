from __future__ import annotations

from outbox.cli import main

raise SystemExit(main())
