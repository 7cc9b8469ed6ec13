"""Can a Serve config's replicas, at their most, be placed on a set of Ray nodes?

Ray places a replica only where its logical resources fit; one that fits nowhere waits forever
while ``serve status`` says UPSCALING. A config whose autoscaler may ask for replicas the cluster
can never hold is therefore a silent throughput cap, so ``serve.config_check --cpus N`` and the
Kubernetes tests check it before anything is deployed.

The check packs every replica the config may run at once (``max_replicas`` when autoscaling) onto
the nodes, largest first, at most ``max_replicas_per_node`` of a deployment on one node.
First-fit decreasing can miss a packing that exists, never invent one: it errs on the side of
refusing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_REPLICA_CPUS = 1.0  # Serve's default ray_actor_options.num_cpus
EPSILON = 1e-4  # Ray's resource granularity


@dataclass(frozen=True)
class Replica:
    deployment: str
    demand: dict[str, float]
    per_node: int | None = None  # the deployment's max_replicas_per_node


@dataclass
class Node:
    name: str
    free: dict[str, float] = field(default_factory=dict)
    placed: dict[str, int] = field(default_factory=dict)  # replicas per deployment on this node

    def fits(self, replica: Replica) -> bool:
        if replica.per_node is not None and self.placed.get(replica.deployment, 0) >= replica.per_node:
            return False
        return all(self.free.get(k, 0.0) + EPSILON >= v for k, v in replica.demand.items() if v > 0)

    def take(self, replica: Replica) -> None:
        for k, v in replica.demand.items():
            self.free[k] = self.free.get(k, 0.0) - v
        self.placed[replica.deployment] = self.placed.get(replica.deployment, 0) + 1


def most_replicas(deployment: dict) -> int:
    """What the autoscaler may ask for, or the fixed count."""
    scaling = deployment.get("autoscaling_config")
    if scaling:
        return int(scaling.get("max_replicas", 1))
    count = deployment.get("num_replicas", 1)
    return 1 if count == "auto" else int(count)


def replica_demand(deployment: dict) -> dict[str, float]:
    options = deployment.get("ray_actor_options") or {}
    demand = {"CPU": float(options.get("num_cpus", DEFAULT_REPLICA_CPUS)), "GPU": float(options.get("num_gpus", 0))}
    demand.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    return {k: v for k, v in demand.items() if v > 0}


def replicas_at_most(config: dict) -> list[Replica]:
    return [
        Replica(d["name"], replica_demand(d), d.get("max_replicas_per_node"))
        for app in config.get("applications", [])
        for d in app.get("deployments", [])
        for _ in range(most_replicas(d))
    ]


def unplaceable(config: dict, nodes: list[Node]) -> list[str]:
    """Replicas (deployment names, one per replica) that no node has room for; [] when all fit."""
    replicas = sorted(
        replicas_at_most(config), key=lambda r: (r.demand.get("GPU", 0), r.demand.get("CPU", 0)), reverse=True
    )
    left = []
    for replica in replicas:
        node = next((n for n in nodes if n.fits(replica)), None)
        if node is None:
            left.append(replica.deployment)
        else:
            node.take(replica)
    return left


def describe(config: dict, nodes: list[Node]) -> str | None:
    """A sentence naming what cannot be placed, or None when everything fits."""
    offered = sum(n.free.get("CPU", 0.0) for n in nodes)
    left = unplaceable(config, [Node(n.name, dict(n.free)) for n in nodes])
    if not left:
        return None
    needed = sum(r.demand.get("CPU", 0.0) for r in replicas_at_most(config))
    counts = ", ".join(f"{left.count(name)} x {name}" for name in sorted(set(left)))
    return (
        f"{counts} cannot be placed: at their most the replicas ask for {needed:g} logical CPUs "
        f"(and their GPUs and custom resources), the nodes offer {offered:g}; Serve would wait for them forever"
    )
