"""How the model is spread over the training processes: trainer.strategy.

ddp: every rank holds the whole model and optimizer; DistributedDataParallel all-reduces
    the gradients; checkpoints are single `.pt` files that rank 0 writes.
fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`) shards parameters, gradients and
    optimizer state over the ranks, each unit (the modules trainer.fsdp_modules names, by
    default the model's direct children, then the root) gathered only while it computes;
    checkpoints are sharded DCP folders that every rank writes (`torchexp.sharded`).

One process trains the whole model either way: under fsdp it is not wrapped, and its
checkpoints are still DCP folders, so that they resume on any number of ranks.
"""

import collections
from collections.abc import Iterator

import torch

from torchexp.distributed import World
from torchexp.errors import ConfigError, first_line

DDP = "ddp"
FSDP = "fsdp"


def wrap_model(
    model: torch.nn.Module,
    strategy: str,
    units: list[str] | None,
    world: World,
    device: torch.device,
    param_dtype: torch.dtype | None,
) -> torch.nn.Module:
    """Return `model` spread over the ranks by `strategy` (itself for one process).

    Args:
        units: class names of the modules sharded as units under fsdp; None: the model's
            direct children that hold parameters.
        param_dtype: under fsdp, the dtype parameters are gathered and computed in (bf16
            from trainer.precision), gradients being reduced in fp32; None keeps fp32.

    Raises:
        ConfigError: trainer.fsdp_modules names a class the model does not contain.
    """
    if strategy == DDP:
        if not world.distributed:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    chosen = choose_units(model, units)  # checked in one process too, before torchrun shows it wrong
    if not world.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world.size,))
    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype is not None else None
    )
    for unit in chosen:
        try:
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        except ValueError as error:  # e.g. a container without forward
            raise ConfigError(
                f"FSDP cannot shard {type(unit).__name__} as a unit: {first_line(error)}; "
                "name the classes to shard in trainer.fsdp_modules"
            ) from error
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def choose_units(model: torch.nn.Module, units: list[str] | None) -> list[torch.nn.Module]:
    """The modules sharded as units before the root: those whose class `units` names, or
    the model's direct children that hold parameters (the members of a ModuleList or
    ModuleDict child), but for those that share a parameter with another.

    Raises:
        ConfigError: a name in `units` matches no module of the model.
    """
    if units is None:
        children = list(expand_containers(model))
        # A parameter two children share (a tied embedding and head) must be sharded once:
        # those children stay with the root.
        owners = collections.Counter(id(parameter) for child in children for parameter in child.parameters())
        return [
            child
            for child in children
            if any(True for _ in child.parameters())
            and all(owners[id(parameter)] == 1 for parameter in child.parameters())
        ]
    found = [module for module in model.modules() if module is not model and type(module).__name__ in units]
    missing = sorted(set(units) - {type(module).__name__ for module in found})
    if missing:
        classes = sorted({type(module).__name__ for module in model.modules()})
        raise ConfigError(
            f"trainer.fsdp_modules names {', '.join(missing)}, which the model does not contain "
            f"(its classes: {', '.join(classes)})"
        )
    return found


def expand_containers(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The direct children of `module`, a ModuleList's or ModuleDict's members in its place
    (they have no forward of their own), at any depth."""
    for child in module.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            yield from expand_containers(child)
        else:
            yield child


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` (or the module under torch.compile) is sharded by FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)
