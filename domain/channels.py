"""Channel choice for a step: the campaign's channel priority among the reachable channels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Why a channel cannot carry a message to this user, most fundamental first: the reported
# reason for a step that cannot send is the best one reached over all its channels.
UNREACHABLE_ORDER = ("no_integration", "no_identifier", "not_opted_in")


@dataclass(frozen=True)
class ChannelChoice:
    channel: str | None  # a Channel value
    reason: str | None  # set when no channel is usable


def choose_channel(
    priority: Iterable[str],
    step_channels: Iterable[str],
    unreachable: Mapping[str, str],
    exclude: Iterable[str] = (),
) -> ChannelChoice:
    """First channel in `priority` that the step uses, not excluded, and reachable.

    Channels are `Channel` values (a StrEnum, so plain names work too). `unreachable` maps a
    channel to why it cannot be used (absent = reachable).
    """
    used = set(step_channels)
    skipped = set(exclude)
    reasons: list[str] = []
    for ch in priority:
        if ch not in used or ch in skipped:
            continue
        why = unreachable.get(ch)
        if why is None:
            return ChannelChoice(ch, None)
        reasons.append(why)
    if not reasons:
        return ChannelChoice(None, "no_channel_left")
    # The most advanced reason: a user opted out of email but lacking a phone is "not_opted_in".
    best = max(reasons, key=lambda r: UNREACHABLE_ORDER.index(r) if r in UNREACHABLE_ORDER else -1)
    return ChannelChoice(None, best)
