"""The event types Adobe documents for Marketo, and the type globs that match none of them.

Every documented type lives under ``com.adobe.platform.marketo.`` (CONTRACT.md §1b, §4):

- lead activities: ``…activity.standard.<name lowercased, without spaces>`` for the
  standard types listed below, and ``…activity.custom`` for every custom activity (ids
  100000 and up, whatever its name), so custom activities add no type names;
- user audit events: ``…audit.user.<component>``;
- notifications: ``…notification.<kind>``.

A sink's ``types`` glob is *checked* when the text before its first wildcard starts with
``com.adobe.platform.marketo.``. A checked glob that matches none of
:data:`DOCUMENTED_TYPES` is most likely misspelt (``…standard.fillform*`` for
``…standard.filloutform``) and would silently route nothing, unless it names one audit
component or notification kind (``…audit.user.<name>``, ``…notification.<name>``, one name
without a dot): Adobe's lists of those end with "...", so a new name is taken as one.
Globs outside the namespace (other providers, ``*.openemail``) are never checked. Marketo
has more activity types than the data streams list, so a mismatch is ground for a
warning, never for an error.

Sans-IO data: ``streamd emit`` generates exactly these types (a test holds them equal).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Final

MARKETO_NAMESPACE: Final = "com.adobe.platform.marketo."
ACTIVITY_PREFIX: Final = MARKETO_NAMESPACE + "activity."
AUDIT_PREFIX: Final = MARKETO_NAMESPACE + "audit.user."
NOTIFICATION_PREFIX: Final = MARKETO_NAMESPACE + "notification."
CUSTOM_ACTIVITY: Final = ACTIVITY_PREFIX + "custom"

# (id, name): the standard activity types the I/O data stream lists (CONTRACT.md §4).
STANDARD_ACTIVITIES: Final[tuple[tuple[int, str], ...]] = (
    (1, "Visit Webpage"), (2, "Fill Out Form"), (3, "Click Link"), (6, "Send Email"),
    (7, "Email Delivered"), (8, "Email Bounced"), (9, "Unsubscribe Email"),
    (10, "Open Email"), (11, "Click Email"), (12, "New Lead"), (13, "Change Data Value"),
    (19, "Sync Lead to SFDC"), (21, "Convert Lead"), (22, "Change Score"),
    (23, "Change Owner"), (24, "Add To List"), (25, "Remove from List"),
    (26, "SFDC Activity"), (27, "Email Bounced Soft"), (32, "Merge Leads"),
    (34, "Add to Opportunity"), (35, "Remove from Opportunity"),
    (36, "Update Opportunity"), (37, "Delete Lead"), (38, "Send Alert"),
    (39, "Send Sales Email"), (40, "Open Sales Email"), (41, "Click Sales Email"),
    (45, "Receive Sales Email"), (46, "Interesting Moment"), (47, "Request Campaign"),
    (48, "Sales Email Bounced"), (100, "Change Lead Partition"),
    (101, "Change Revenue Stage"), (102, "Change Revenue Stage Manually"),
    (104, "Change Status In Progression"), (106, "Enrich with Data.com"),
    (108, "Change Segment"), (110, "Call Webhook"), (111, "Send Forward to Friend Email"),
    (112, "Receive Forward to Friend Email"), (113, "Add To Nurture"),
    (114, "Change Nurture Track"), (115, "Change Nurture Cadence"),
    (123, "Change Program Member Data"), (131, "Fill Out Facebook Lead Ads Form"),
    (132, "Click RTP Call to Action"), (133, "Click Predictive Content"),
    (145, "Push Lead to Marketo"), (300, "Sync Lead to Microsoft"), (400, "Share Content"),
    (401, "Vote in Poll"), (402, "Sign Up for Referral Offer"),
    (403, "Achieve Goal In Referral"), (405, "Click Shared Link"), (406, "Win Sweepstakes"),
    (407, "Enter Sweepstakes"), (408, "Disqualify Sweepstakes"),
    (409, "Earn Entry In Social App"), (410, "Refer to Social App"),
)  # fmt: skip
# The components and kinds Adobe names (its lists say "...": Adobe may add more).
AUDIT_COMPONENTS: Final = (
    "email", "landingpage", "smartcampaign", "emailbatchprogram", "form", "program",
    "snippet", "smartlist",
)  # fmt: skip
NOTIFICATION_KINDS: Final = ("campaign_abort", "campaign_failure", "web_services")


def standard_activity_type(name: str) -> str:
    """The I/O Events type of a standard activity: ``Fill Out Form`` → ``…standard.filloutform``."""
    return ACTIVITY_PREFIX + "standard." + name.lower().replace(" ", "")


DOCUMENTED_TYPES: Final[frozenset[str]] = frozenset(
    [standard_activity_type(name) for _, name in STANDARD_ACTIVITIES]
    + [CUSTOM_ACTIVITY]
    + [AUDIT_PREFIX + component for component in AUDIT_COMPONENTS]
    + [NOTIFICATION_PREFIX + kind for kind in NOTIFICATION_KINDS]
)
_WILDCARD = re.compile(r"[*?\[]")
_ONE_NAME = re.compile(r"[^.]+")


def is_checked(glob: str) -> bool:
    """True when the glob's fixed start (before any wildcard) is in Marketo's namespace."""
    return _WILDCARD.split(glob, maxsplit=1)[0].startswith(MARKETO_NAMESPACE)


def matches_documented(glob: str) -> bool:
    """True when the glob (shell-style, case-sensitive, as sinks match) takes a documented type."""
    return any(fnmatch.fnmatchcase(t, glob) for t in DOCUMENTED_TYPES)


def _names_an_open_kind(glob: str) -> bool:
    """``…audit.user.<name>`` or ``…notification.<name>``: a component or kind Adobe may add."""
    return any(
        glob.startswith(prefix) and _ONE_NAME.fullmatch(glob[len(prefix) :]) is not None
        for prefix in (AUDIT_PREFIX, NOTIFICATION_PREFIX)
    )


def unmatched_type_glob(glob: str) -> str | None:
    """Why a checked glob matches no documented type (with the closest one), else None."""
    if not is_checked(glob) or matches_documented(glob) or _names_an_open_kind(glob):
        return None
    literal = _WILDCARD.sub("", glob)
    close = difflib.get_close_matches(literal, sorted(DOCUMENTED_TYPES), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{glob!r} matches none of the event types Adobe documents for Marketo{hint}"
