"""Whether a run counts: one verdict from whatever ended it and what its tenants did."""

from __future__ import annotations

from ...config import Tenant
from ...core.records import RequestRecord


def run_verdict(error: str | None, planned: int | None, records: list[RequestRecord]) -> tuple[bool, str | None]:
    """A run is complete only when nothing went wrong, every planned request ran, and at
    least one completed. Failed requests are counted, not a reason to call a run incomplete."""
    if error:
        return False, error
    measured = [r for r in records if not r.warmup]
    if planned is not None and len(measured) < planned:
        return False, f"only {len(measured)} of {planned} planned requests ran"
    if not any(r.ok for r in measured):
        return False, "no request completed"
    return True, None


def tenants_verdict(error: str | None, tenants: list[Tenant], records: list[RequestRecord]) -> tuple[bool, str | None]:
    """The run's verdict: `run_verdict` for each tenant on its own requests. It fails closed:
    an error is the verdict whatever the tenants did, and a run without a tenant measured
    nothing, so it is never complete."""
    if error:
        return False, error
    if not tenants:
        return False, "no tenant sent load"
    for tenant in tenants:
        mine = records if len(tenants) == 1 else [r for r in records if r.tenant == tenant.name]
        complete, reason = run_verdict(None, tenant.load.n_requests, mine)
        if not complete:
            return False, reason if tenant.name is None else f"tenant {tenant.name}: {reason}"
    return True, None
