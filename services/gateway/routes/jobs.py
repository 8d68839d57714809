"""Jobs: read the state of a chat job."""

from uuid import UUID

from fastapi import APIRouter

from services.gateway.deps import CallerDep, ServiceDep
from services.gateway.schemas import JobRead, problems

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobRead, responses=problems(401, 404, 422, 500, 503, 504))
async def get_job(caller: CallerDep, service: ServiceDep, job_id: UUID) -> JobRead:
    """Return one of the caller's jobs."""
    return JobRead.of(await service.get_job(caller, job_id))
