"""streamd.clock: the one place that reads the wall clock for journal times."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import streamd.journal
from streamd.clock import utc_now, utc_now_datetime
from streamd.core import parse_timestamp


def test_utc_now_is_the_journals_text_form_of_now() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)  # the text drops microseconds
    text = utc_now()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
    parsed = parse_timestamp(text)
    assert parsed is not None and before <= parsed <= after


def test_utc_now_datetime_is_aware_utc() -> None:
    assert utc_now_datetime().tzinfo is UTC


def test_the_journal_package_re_exports_it_without_loading_trio() -> None:
    assert streamd.journal.utc_now is utc_now
    code = "import sys, streamd.journal as j; j.utc_now(); sys.exit('trio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
