"""A validation error that names the field it is about, below the model that found it.

A pydantic model validator sees several fields at once ("shares must sum to 100"), so its error's
`loc` is the model itself (for a campaign: `["body"]`) and only the message said which field was
wrong. Raised as `FieldError("variations", "shares must sum to 100")`, the API's validation
handler (`api/errors.py::validation_detail`) appends the place to `loc`:
`["body", "variations"]`. The message keeps the place too, for people reading it.
"""

from __future__ import annotations


class FieldError(ValueError):
    def __init__(self, place: str, message: str) -> None:
        super().__init__(f"{place}: {message}")
        self.place = place
        self.message = message

    def loc(self) -> list[str | int]:
        """The place as `loc` parts: list indexes as numbers, as pydantic gives them."""
        return [int(part) if part.isdigit() else part for part in self.place.split(".")]
