"""Durations in API bodies: ISO 8601 (`PT4H`, `P3D`) or a number of seconds, also written as a
string (`"300"`), which is how form fields and CSV-minded clients send numbers.

Pydantic reads `300` but refuses `"300"` with "\"day\" identifier in duration not correctly
formatted", which names neither the accepted forms nor the field's unit; here every refused value
gets one message that does.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, TypeAdapter, ValidationError

_SECONDS = re.compile(r"\s*\d+(\.\d+)?\s*")
_TIMEDELTA = TypeAdapter(timedelta)
FORMS = "an ISO 8601 duration (PT4H, P3D) or a number of seconds"


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        if _SECONDS.fullmatch(value):
            return float(value)
        try:
            return _TIMEDELTA.validate_python(value)
        except ValidationError:
            raise ValueError(f"expected {FORMS}; got {value[:40]!r}") from None
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
