"""Everything about processes and ranks lives here; model code never asks "am I rank 0?".

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous address); plain `python` runs one
process without a process group, so no port is ever opened by us.
"""
from __future__ import annotations

import datetime
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from common.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r}: expected an integer (set by torchrun)") from None


def init_distributed(timeout_s: int) -> DistInfo:
    rank, world_size, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # The timeout bounds every collective: a crashed rank makes the others fail, not hang forever.
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _restart_safe_store(world_size, timeout)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                device_id=device if device.type == "cuda" else None,
                                **({"store": store, "rank": rank, "world_size": world_size} if store else {}))
    return DistInfo(rank, world_size, local_rank, device)


def _restart_safe_store(world_size: int, timeout: datetime.timedelta):
    """The rendezvous store of a worker group restarted by `torchrun --max-restarts` on one node.

    torchrun's workers share the agent's TCPStore, which outlives a restart with the keys of the failed
    attempt still in it: a restarted rank can read a dead peer's address and fail with "Gloo connectFullMesh
    failed ... Connection refused" (or NCCL connect errors; PyTorch issues #135712, #167288). On one node
    every worker of an attempt gets the same TORCHELASTIC_RESTART_COUNT, so a prefix per attempt keeps the
    attempts apart. With several nodes the counts are per agent and may differ, so torch's default store is
    kept there (launch with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for elastic restarts across nodes)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or _env_int("GROUP_WORLD_SIZE", 1) != 1:
        return None
    base = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world_size, is_master=False,
                         timeout=timeout)
    return dist.PrefixStore(f"motion2text/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (one element when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj, dst: int = 0):
    """Every rank's `obj` in rank order on rank `dst`, None on the others (one element when not distributed).
    Where only one rank needs the result, this avoids all_gather's copy of everything on every rank."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of `module` on every rank with rank `src`'s values (in place).

    One flat broadcast per (dtype, device) group, not one per tensor. Needed where ranks can drift apart:
    without SyncBatchNorm each rank's BatchNorm running statistics follow its own batches."""
    if not is_distributed() or dist.get_world_size() == 1:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in (*module.parameters(), *module.buffers()):
        groups.setdefault((t.dtype, t.device), []).append(t)
    for tensors in groups.values():
        flat = torch._utils._flatten_dense_tensors([t.detach() for t in tensors])
        dist.broadcast(flat, src=src)
        torch._foreach_copy_(tensors, torch._utils._unflatten_dense_tensors(flat, tensors))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is True on any rank (keeps ranks taking the same branch)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def run_on_main(fn: Callable[[], T], dist_info: DistInfo, poll_s: float = 0.5) -> Optional[T]:
    """fn() on rank 0 only (the others get None), however long it takes: while rank 0 works in a thread, every
    rank meets at a small broadcast every `poll_s`, so no rank sits in one collective past the process-group
    timeout. An exception of fn is raised on rank 0 after the others were told it finished."""
    if not is_distributed() or dist_info.world_size == 1:
        return fn() if dist_info.is_main else None
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # re-raised in the calling thread
            outcome["error"] = e

    thread = threading.Thread(target=work, name="run_on_main", daemon=True) if dist_info.is_main else None
    if thread is not None:
        thread.start()
    done = torch.zeros(1, device=dist_info.device)
    while True:
        if thread is not None:
            thread.join(poll_s)
            done.fill_(0.0 if thread.is_alive() else 1.0)
        dist.broadcast(done, src=0)
        if done.item():
            break
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
