"""The tenants' loads: each tenant's requests and where they go, resolved once per run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config import ScenarioConfig, Tenant
from ...core.events import Publisher
from ...load.loadgen import LoadGenerator
from ...load.sending import Endpoint
from ...load.sharegpt import with_max_model_len
from ...load.workload import RequestSource, inter_arrival_gaps, load_tokenizer, random_streams
from ...serving.engines import LaunchPlan
from ...serving.models import ResolvedModel


@dataclass
class TenantLoad:
    """One tenant's requests and where they go, built before the run folder exists (a bad
    workload is an error before anything starts)."""

    tenant: Tenant
    endpoints: list[Endpoint]
    source: RequestSource
    tokenizer: Any
    arrival_rng: Any

    @classmethod
    def build(cls, config: ScenarioConfig, tenant: Tenant, models: dict[int, ResolvedModel],
              plans: list[LaunchPlan]) -> "TenantLoad":
        first = tenant.servers[0]
        tokenizer = load_tokenizer(config.tokenizer or models[first].path)
        prompt_rng, arrival_rng = random_streams(tenant.seed)
        workload = with_max_model_len(tenant.workload, [config.servers[i] for i in tenant.servers],
                                      [models[i].path for i in tenant.servers])
        endpoints = [Endpoint(plans[i].name, plans[i].base_url, models[i].served_name, config.servers[i].tenant)
                     for i in tenant.servers]
        return cls(tenant, endpoints, RequestSource(workload, tenant.api, tokenizer, prompt_rng), tokenizer,
                   arrival_rng)

    def generator(self, publish: Publisher) -> LoadGenerator:
        load = self.tenant.load
        if load.open_loop:
            # A step schedule scales gaps drawn at rate 1 by each step's rate.
            rate = 1.0 if load.steps is not None else load.request_rate
            arrivals = inter_arrival_gaps(self.arrival_rng, rate, load.burstiness)
        return LoadGenerator(
            self.endpoints, self.tenant.api, load, self.source,
            arrivals=arrivals if load.open_loop else None,
            count_tokens=lambda text: len(self.tokenizer.encode(text, add_special_tokens=False)),
            publish=publish, tenant=self.tenant.name,
        )


def tenant_loads(config: ScenarioConfig, models: dict[int, ResolvedModel], plans: list[LaunchPlan]) -> list[TenantLoad]:
    """Every tenant's load (one without tenants: the scenario's own), the one resolution of
    the tenants that the run folder's name, the load and the summary all read."""
    return [TenantLoad.build(config, tenant, models, plans) for tenant in config.resolved_tenants()]
