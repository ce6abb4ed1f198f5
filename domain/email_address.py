"""What a plain email address is, wherever one is accepted (opt-ins, subscriber lists, SMTP sends).

Exactly one address, no display name, no quoting: `local@domain.tld`. Refused anywhere in it: a
second `@`, whitespace and control characters, and `, ; < > " ( ) [ ] \\ :`, which make an
address list, a display name, a quoted part, a comment, a group or an address literal in a mail
header. A value with such a character could name several recipients (`root,victim@evil.com`
became one RCPT per address over SMTP) or an address other than the one stored.
"""

from __future__ import annotations

import re

MAX_LENGTH = 320  # 64 for the local part + @ + 255 for the domain

# One character class, shared by the str and bytes forms (`domain/subscribers.py` checks whole
# slices of list files with it, and must accept exactly what `is_email` accepts).
FORBIDDEN = r'@\s\x00-\x1f\x7f-\x9f,;<>"()\[\]\\:'  # \x7f-\x9f: DEL and the C1 controls
PART = rf"[^{FORBIDDEN}]+"
PART_ASCII = rb"[^@\x00-\x20\x7f,;<>\"()\[\]\\:]+"  # bytes: \s is ASCII only there; all controls listed
EMAIL = re.compile(rf"{PART}@{PART}\.{PART}")


def is_email(value: str) -> bool:
    """True for exactly one plain address (see the module); the caller strips padding first."""
    return len(value) <= MAX_LENGTH and EMAIL.fullmatch(value) is not None


INVALID = 'not a valid email address (one plain address: no spaces, control characters or ,;<>"()[]\\:)'
