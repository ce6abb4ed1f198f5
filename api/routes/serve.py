"""`POST /v2/serve/user/choose`: not served, with an answer saying so.

The Experience API's choose call picks on-site content (personalisation decisions); Rejoin decides
none, so it is no operation here (not in the schema). A backend pointed at Rejoin unchanged still
calls it, and a bare "Not Found" read as a wrong URL or key: the 404 says what Rejoin does not do
and where the page views some clients report through choose (`options.isImplicitPageview`) go.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.errors import error_body

router = APIRouter(prefix="/v2/serve/user", tags=["ingestion"])

NOT_SERVED = (
    "Rejoin does not serve choose (personalisation decisions: it decides no on-site content); "
    "report page views with POST /v2/collect/user/pageview and events with POST /v2/collect/user/event"
)


@router.post("/choose", include_in_schema=False)
def choose() -> JSONResponse:
    # `not_found`, as an unknown path's 404 is typed (api/errors.py): a client reading the type still
    # sees a 404 of the path; the message says why.
    return JSONResponse(error_body(NOT_SERVED, kind="not_found"), status_code=404)
