"""What the generated traffic is made of: activity types, audit components, notifications.

The activity types are the standard ids CONTRACT.md §4 lists (the ones Marketo's I/O
stream documents), weighted towards what a real instance sends most (web visits and
email engagement), plus custom activities (ids 100000+). Audit components and actions,
and notification kinds, follow the contract's type names.
"""

from __future__ import annotations

from typing import Final

# (id, name, weight). Weights of the first version of the bench generator are kept, so
# the benchmark's bodies stay comparable; every other documented type weighs 1.
ACTIVITY_TYPES: Final[tuple[tuple[int, str, int], ...]] = (
    (1, "Visit Webpage", 30),
    (2, "Fill Out Form", 4),
    (3, "Click Link", 6),
    (6, "Send Email", 12),
    (7, "Email Delivered", 12),
    (8, "Email Bounced", 1),
    (9, "Unsubscribe Email", 1),
    (10, "Open Email", 14),
    (11, "Click Email", 6),
    (12, "New Lead", 3),
    (13, "Change Data Value", 8),
    (19, "Sync Lead to SFDC", 2),
    (21, "Convert Lead", 1),
    (22, "Change Score", 6),
    (23, "Change Owner", 1),
    (24, "Add To List", 3),
    (25, "Remove from List", 1),
    (26, "SFDC Activity", 1),
    (27, "Email Bounced Soft", 1),
    (32, "Merge Leads", 1),
    (34, "Add to Opportunity", 1),
    (35, "Remove from Opportunity", 1),
    (36, "Update Opportunity", 1),
    (37, "Delete Lead", 1),
    (38, "Send Alert", 1),
    (39, "Send Sales Email", 1),
    (40, "Open Sales Email", 1),
    (41, "Click Sales Email", 1),
    (45, "Receive Sales Email", 1),
    (46, "Interesting Moment", 2),
    (47, "Request Campaign", 1),
    (48, "Sales Email Bounced", 1),
    (100, "Change Lead Partition", 1),
    (101, "Change Revenue Stage", 1),
    (102, "Change Revenue Stage Manually", 1),
    (104, "Change Status In Progression", 3),
    (106, "Enrich with Data.com", 1),
    (108, "Change Segment", 1),
    (110, "Call Webhook", 1),
    (111, "Send Forward to Friend Email", 1),
    (112, "Receive Forward to Friend Email", 1),
    (113, "Add To Nurture", 1),
    (114, "Change Nurture Track", 1),
    (115, "Change Nurture Cadence", 1),
    (123, "Change Program Member Data", 1),
    (131, "Fill Out Facebook Lead Ads Form", 1),
    (132, "Click RTP Call to Action", 1),
    (133, "Click Predictive Content", 1),
    (145, "Push Lead to Marketo", 1),
    (300, "Sync Lead to Microsoft", 1),
    (400, "Share Content", 1),
    (401, "Vote in Poll", 1),
    (402, "Sign Up for Referral Offer", 1),
    (403, "Achieve Goal In Referral", 1),
    (405, "Click Shared Link", 1),
    (406, "Win Sweepstakes", 1),
    (407, "Enter Sweepstakes", 1),
    (408, "Disqualify Sweepstakes", 1),
    (409, "Earn Entry In Social App", 1),
    (410, "Refer to Social App", 1),
    (100001, "Attended Webinar", 2),
    (100002, "Downloaded Whitepaper", 2),
    (100007, "Visited Trade Show Booth", 1),
    (100017, "Started Product Trial", 1),
)
TYPE_WEIGHTS: Final = tuple(w for _, _, w in ACTIVITY_TYPES)
WEB_TYPES: Final = frozenset({1, 3, 2, 132, 133, 405})
EMAIL_TYPES: Final = frozenset({6, 7, 8, 9, 10, 11, 27, 39, 40, 41, 45, 48, 111, 112})
CHANGE_TYPES: Final = frozenset({13, 22, 101, 102, 104, 108, 123})
PROGRAM_TYPES: Final = frozenset({24, 25, 113, 114, 115, 47})

MUNCHKIN_IDS: Final = ("123-ABC-456", "284-XYZ-901", "517-QRS-338", "902-LMN-117")
MUNCHKIN_WEIGHTS: Final = (8, 4, 2, 1)
IMS_ORG_ID: Final = "ADOBEORGID@AdobeOrg"
ACTIVITY_TYPE_PREFIX: Final = "com.adobe.platform.marketo.activity."
AUDIT_TYPE_PREFIX: Final = "com.adobe.platform.marketo.audit.user."
NOTIFICATION_TYPE_PREFIX: Final = "com.adobe.platform.marketo.notification."

# (type suffix, componentType): user audit events, by the asset the user touched.
AUDIT_COMPONENTS: Final[tuple[tuple[str, str], ...]] = (
    ("email", "Email"),
    ("landingpage", "Landing Page"),
    ("smartcampaign", "Smart Campaign"),
    ("emailbatchprogram", "Email Batch Program"),
    ("form", "Form"),
    ("program", "Program"),
    ("snippet", "Snippet"),
    ("smartlist", "Smart List"),
)
AUDIT_ACTIONS: Final = (
    "approve",
    "unapprove",
    "create",
    "edit",
    "delete",
    "clone",
    "activate",
    "deactivate",
    "schedule",
)
USERS: Final = (
    "example@marketo.com",
    "ops.admin@example.com",
    "campaigns@example.com",
    "web.team@example.com",
)
NOTIFICATION_KINDS: Final = ("campaign_abort", "campaign_failure", "web_services")

PAGES: Final = (
    "www.example.com/pricing.html",
    "www.example.com/products/streaming-analytics",
    "www.example.com/blog/2026/05/why-durable-ingest-matters",
    "info.example.com/lp/webinar-spring-launch.html",
    "www.example.com/customers/case-study-acme-logistics",
    "www.example.com/docs/getting-started?utm_source=newsletter",
)
EMAILS: Final = (
    "Spring launch email",
    "Webinar invite - May 2026",
    "Nurture 3: Customer stories",
    "Trial day 7 check-in",
    "Quarterly product update",
)
USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
)
REFERRERS: Final = (
    "https://www.google.com/",
    "https://www.linkedin.com/feed/",
    "https://news.ycombinator.com/",
    "",
)
CAMPAIGNS: Final = (
    (3310, "Enrich titles"),
    (4102, "Score web engagement"),
    (5012, "Spring launch send"),
    (5120, "Webinar follow-up"),
)
PROGRAMS: Final = ((1201, "2026-05 Spring Launch"), (1288, "Always-on Nurture"))
