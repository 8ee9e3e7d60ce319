"""Miscellaneous operations (§1.6) that need no task store: the privacy-agreement record."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from ferry.api.deps import CurrentPrincipal, Services, ok
from ferry.api.schemas import EmptyResponse

router = APIRouter()


@router.post("/privacy-agreements", response_model=EmptyResponse, summary="update_privacy_agreement_record")
def update_privacy_agreement_record(principal: CurrentPrincipal, services: Services) -> JSONResponse:
    services.record_privacy_agreement(principal.project_id)
    return ok(EmptyResponse())
