"""Scanner User-Agents: "bot" counts only as a bot's token, never inside a word (a CUBOT phone's
model name held its clicks out of the reports as `scanner_user_agent`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.tracking import bot_reason

SENT = datetime(2026, 1, 1, tzinfo=UTC)
LATER = SENT + timedelta(minutes=5)

PEOPLE = [
    "Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 9; CUBOT KING KONG 3) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/119.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 11; CUBOT_NOTE_20 Build/RP1A.200720.011; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/118.0.5993.111 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Cubot P40) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/121.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
]

BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "AdsBot-Google (+http://www.google.com/adsbot.html)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Slackbot 1.0 (+https://api.slack.com/robots)",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (Linux; Android 7.0;) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 "
    "(compatible; PetalBot;+https://webmaster.petalsearch.com/site/petalbot)",
    "Mozilla/5.0 (compatible; bot)",
    "Mozilla/5.0 (compatible; Cliqzbot)",
    "Twitterbot/1.0",
    "Mozilla/5.0 (compatible; Barracuda Sentinel)",
    "Mozilla/5.0 (compatible; Mimecast Link Scanner)",
]


@pytest.mark.parametrize("agent", PEOPLE)
def test_phones_and_browsers_are_people(agent: str) -> None:
    assert bot_reason(method="GET", user_agent=agent, at=LATER, sent_at=SENT) is None


@pytest.mark.parametrize("agent", BOTS)
def test_bots_naming_themselves_are_flagged(agent: str) -> None:
    assert bot_reason(method="GET", user_agent=agent, at=LATER, sent_at=SENT) == "scanner_user_agent"
