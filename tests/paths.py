"""Where the tests find the repository's files and the shared webhook corpus, from any tier."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The corpus of real webhook bodies lives beside the checkout, in shared/ (never edited here).
WEBHOOK_FIXTURES = ROOT.parent / "shared" / "fixtures" / "webhooks"
# The 2026 additions: template, account, quality, capability, preference bodies (issue 18).
WEBHOOK_FIXTURES_2026 = ROOT.parent / "shared" / "fixtures" / "webhooks-2026"
