"""The documented event types, and which sink type filters check-config warns about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamd.core import DOCUMENTED_TYPES, decode_delivery, unmatched_type_glob
from streamd.core.event_types import (
    AUDIT_COMPONENTS,
    AUDIT_PREFIX,
    CUSTOM_ACTIVITY,
    NOTIFICATION_KINDS,
    NOTIFICATION_PREFIX,
    STANDARD_ACTIVITIES,
)
from streamd.emit import catalog
from streamd.emit.generate import BatchMaker
from streamd.service.config import decode_config, type_filter_warnings


def test_the_emulator_generates_the_documented_types() -> None:
    assert [(i, n) for i, n, _ in catalog.ACTIVITY_TYPES if i < 100_000] == list(
        STANDARD_ACTIVITIES
    )
    assert [suffix for suffix, _ in catalog.AUDIT_COMPONENTS] == list(AUDIT_COMPONENTS)
    assert catalog.NOTIFICATION_KINDS == NOTIFICATION_KINDS
    assert catalog.AUDIT_TYPE_PREFIX == AUDIT_PREFIX
    assert catalog.NOTIFICATION_TYPE_PREFIX == NOTIFICATION_PREFIX
    seen: set[str | None] = set()
    for shape in ("legacy", "mixed"):
        maker = BatchMaker(shape, seed=1, worker=0)
        for _ in range(20):
            seen |= {e.type for e in decode_delivery(maker.make(500).body).events}
    assert seen <= DOCUMENTED_TYPES
    assert len(seen) > 60  # nearly every type turns up in 20,000 events


@pytest.mark.parametrize(
    ("glob", "warned"),
    [
        # The old README example: the type is filloutform.
        ("com.adobe.platform.marketo.activity.standard.fillform*", True),
        ("com.adobe.platform.marketo.activity.standard.filloutform*", False),
        ("com.adobe.platform.marketo.activity.standard.filloutform", False),
        ("com.adobe.platform.marketo.activity.standard.FillOutForm", True),  # case matters
        ("com.adobe.platform.marketo.activity.*", False),
        ("com.adobe.platform.marketo.activity.custom", False),  # every custom activity
        ("com.adobe.platform.marketo.activity.custom.attendedwebinar", True),
        ("com.adobe.platform.marketo.activity.standard.attendedwebinar", True),
        ("com.adobe.platform.marketo.activity.standard.*email*", False),
        ("com.adobe.platform.marketo.activity.standard.[ov]*", False),
        ("com.adobe.platform.marketo.activty.*", True),  # the namespace misspelt
        ("com.adobe.platform.marketo.*", False),
        ("com.adobe.platform.marketo.audit.*", False),
        ("com.adobe.platform.marketo.audit.email", True),  # audit types are audit.user.<x>
        ("com.adobe.platform.marketo.audit.user.email", False),
        ("com.adobe.platform.marketo.audit.user.apiuser", False),  # a component Adobe may add
        ("com.adobe.platform.marketo.audit.user.a.b", True),
        ("com.adobe.platform.marketo.notification.campaign_*", False),
        ("com.adobe.platform.marketo.notification.quota_exceeded", False),  # a new kind
        ("com.adobe.platform.marketo.notifications.*", True),
        # Not checked: nothing fixed in Marketo's namespace before the first wildcard.
        ("*.openemail", False),
        ("*.fillform", False),
        ("com.adobe.platform.marketo*", False),
        ("com.example.other.provider", False),
        ("*", False),
    ],
)
def test_which_type_globs_are_warned_about(glob: str, warned: bool) -> None:
    assert (unmatched_type_glob(glob) is not None) is warned


def test_the_warning_suggests_the_closest_type() -> None:
    message = unmatched_type_glob("com.adobe.platform.marketo.activity.standard.fillform*")
    assert message is not None
    assert "did you mean 'com.adobe.platform.marketo.activity.standard.filloutform'" in message
    assert CUSTOM_ACTIVITY in DOCUMENTED_TYPES


def test_type_filter_warnings_name_the_key() -> None:
    config = decode_config(
        b'[[sinks]]\nname = "a"\nkind = "stdout"\n[[sinks.filters]]\nstreams = ["audit"]\n'
        b'[[sinks.filters]]\ntypes = ["*.openemail", "com.adobe.platform.marketo.audit.mail"]\n',
        "t.toml",
    )
    [warning] = type_filter_warnings(config)
    assert warning.startswith("key sinks[0].filters[1].types[1] (sink 'a'): ")


def test_check_config_warns_on_stderr_and_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "streamd.toml"
    config.write_text(
        '[[sinks]]\nname = "forms"\nkind = "file"\n[sinks.file]\ndirectory = "forms"\n'
        "[[sinks.filters]]\n"
        'types = ["com.adobe.platform.marketo.activity.standard.fillform*"]\n'
    )
    argv = [sys.executable, "-m", "streamd", "--log-format", "text", "check-config"]
    argv += ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert ": ok — " in result.stdout and "warning" not in result.stdout
    assert "WARNING streamd.config: key sinks[0].filters[0].types[0] (sink 'forms')" in (
        result.stderr
    )
    assert "did you mean 'com.adobe.platform.marketo.activity.standard.filloutform'" in (
        result.stderr
    )
    fixed = config.read_text().replace("fillform*", "filloutform")
    config.write_text(fixed)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == ""
