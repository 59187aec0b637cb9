"""torch.distributed plumbing for the trainer: init from torchrun's environment, wrapping, rank-aware helpers.

One process (no torchrun) needs no process group; under torchrun the backend is gloo on CPU and nccl on CUDA.
Wrapping is DDP by default, or FSDP2 (`fully_shard`) with the backbone's blocks sharded one by one and the rest
of the model sharded at the root. All rank logic of the trainer lives here.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

Strategy = Literal["auto", "none", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("auto", "none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, device, backend ("" when there is no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from e


def init_distributed(device: str = "auto") -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) and start the process group when world size > 1.

    device: "auto" (CUDA if available, else CPU), "cpu" or "cuda". Backend = nccl on CUDA, gloo on CPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = ""
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        logger.info("process group up: rank %d/%d, backend %s, device %s", rank, world, backend, dev)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def quiet_other_ranks(info: DistInfo) -> None:
    """Only rank 0 logs INFO: other ranks keep warnings and errors (their messages would repeat rank 0's)."""
    if not info.is_main:
        logging.getLogger("instructvla").setLevel(logging.WARNING)


def cleanup() -> None:
    """Destroy the process group if one is up.

    Call it after the model and optimizer are unreachable: FSDP2 modules keep references to the process group (via
    their device mesh), and a gloo group that is only freed at interpreter exit can abort the process (its worker
    threads are torn down during C++ static destruction). The garbage collection here frees such cycles first.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (returns the input unchanged for one process)."""
    if not info.distributed:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(info: DistInfo, obj: object) -> object:
    """Rank 0's `obj` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(info: DistInfo, obj: object) -> list[object]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) with one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """Seed for a rank's random stream (noise, dropout): distinct per rank, fixed per (seed, rank)."""
    return seed + 1_000_003 * rank


def resolve_strategy(strategy: str, info: DistInfo) -> str:
    """'auto' -> 'ddp' when distributed, else 'none'. FSDP on one process is allowed (it is a no-op shard)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        return "ddp" if info.distributed else "none"
    if strategy == "ddp" and not info.distributed:
        return "none"
    return strategy


def wrap_model(
    model: nn.Module,
    info: DistInfo,
    strategy: str = "auto",
    shard_units: Callable[[nn.Module], Iterable[nn.Module]] | None = None,
    find_unused_parameters: bool = True,
) -> nn.Module:
    """Wrap `model` for data parallel training; returns the module to call (the original when strategy is none).

    ddp:  DistributedDataParallel (find_unused_parameters by default: a text-only batch leaves the action expert
          without gradient, and a stage may route some tokens away from an expert).
    fsdp: FSDP2 `fully_shard` on each module of `shard_units(model)` (the backbone's transformer blocks), then on
          the root, so the rest of the model (projector, action expert) forms one more shard group.
    Frozen parameters stay frozen; parameters must be on `info.device` already.
    """
    strategy = resolve_strategy(strategy, info)
    if strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    # fsdp
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        # fully_shard needs a device mesh, hence a process group even for one process.
        raise ValueError("strategy 'fsdp' needs a process group: launch with torchrun (even --nproc_per_node 1)")
    units = list(shard_units(model)) if shard_units is not None else []
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    logger.info("FSDP2: %d sharded blocks + root", len(units))
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module behind a DDP wrapper (FSDP2 modifies the module in place, so it is returned as is)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def is_fsdp(model: nn.Module) -> bool:
    """True if FSDP2 sharded this module."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(model, FSDPModule)


def shard_sequence(n_items: int, info: DistInfo) -> range:
    """This rank's share of `n_items` positions, strided (rank, rank + world, ...)."""
    return range(info.rank, n_items, info.world_size)


class ShardedBatches:
    """Endless, resumable stream of collated batches from one rank's share of a map-style dataset.

    Each epoch draws one permutation of all indices from (seed, epoch) and gives rank r the items r, r+W, ... (W =
    world size), cut to the same length on every rank, in batches of `batch_size` (a last partial batch is dropped).
    The position is (epoch, batch index), counted on *delivered* batches, so a DataLoader's prefetching does not
    move it; `state_dict`/`load_state_dict` resume exactly there. With `num_workers` > 0, workers load samples and
    the collate function runs in this process (it may use the model's device).
    epoch_indices: ask the dataset for `epoch * len + i` instead of `i` (datasets that re-draw augmentation and
    prompts per epoch from the index, like `instructvla.data.dataset.RobotDataset`).
    prefetch: a background thread loads (or, with workers, collects) and collates up to this many batches ahead while
    the model computes (0 = in the caller's thread). A loading error is raised by the `next` that would return the batch.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        info: DistInfo,
        seed: int,
        collate: Callable[[list], object],
        num_workers: int = 0,
        name: str = "dataset",
        epoch_indices: bool = False,
        prefetch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")
        n = len(dataset)
        if n == 0:
            raise ValueError(f"{name} is empty: nothing to train on")
        per_rank = n // info.world_size
        if per_rank < batch_size:
            raise ValueError(
                f"{name} has {n} samples: too few for {info.world_size} process(es) x batch size {batch_size}"
            )
        self.dataset, self.batch_size, self.info, self.seed = dataset, batch_size, info, seed
        self.collate, self.num_workers, self.name = collate, num_workers, name
        self.epoch_indices = epoch_indices
        if prefetch < 0:
            raise ValueError(f"{name}: prefetch must be >= 0, got {prefetch}")
        self.prefetch = prefetch
        self._prefetcher: _Prefetcher | None = None
        self.per_rank = per_rank
        self.batches_per_epoch = per_rank // batch_size
        self.epoch, self.batch = 0, 0
        self._perm_epoch, self._share = -1, torch.empty(0, dtype=torch.long)
        self._iter = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def indices(self, epoch: int, batch: int) -> list[int]:
        """Dataset indices of this rank's batch `batch` of epoch `epoch`."""
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            perm = torch.randperm(len(self.dataset), generator=gen)
            self._share = perm[self.info.rank :: self.info.world_size][: self.per_rank]
            if self.epoch_indices:
                self._share = self._share + epoch * len(self.dataset)
            self._perm_epoch = epoch
        return self._share[batch * self.batch_size : (batch + 1) * self.batch_size].tolist()

    def _positions(self, epoch: int, batch: int):
        while True:
            yield epoch, batch
            batch += 1
            if batch == self.batches_per_epoch:
                epoch, batch = epoch + 1, 0

    def _index_lists(self, epoch: int, batch: int):
        for e, b in self._positions(epoch, batch):
            yield self.indices(e, b)

    def _start(self) -> None:
        if self.num_workers > 0:
            from torch.utils.data import DataLoader

            loader = DataLoader(
                self.dataset,
                batch_sampler=self._index_lists(self.epoch, self.batch),
                num_workers=self.num_workers,
                collate_fn=list,
                generator=torch.Generator().manual_seed(self.seed + self.epoch * 100_003 + self.batch),
            )
            self._iter = (self.collate(samples) for samples in loader)
        else:
            self._iter = (
                self.collate([self.dataset[i] for i in idx]) for idx in self._index_lists(self.epoch, self.batch)
            )
        if self.prefetch > 0:
            self._prefetcher = _Prefetcher(self._iter, self.prefetch, self.name)
            self._iter = self._prefetcher

    def __iter__(self):
        return self

    def __next__(self):
        if self._iter is None:
            self._start()
        out = next(self._iter)
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "batches_per_epoch": self.batches_per_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("batches_per_epoch") != self.batches_per_epoch:
            raise ValueError(
                f"{self.name}: checkpoint has {state.get('batches_per_epoch')} batches per epoch, this run "
                f"{self.batches_per_epoch}: the dataset, batch size or process count changed"
            )
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.close()

    def close(self) -> None:
        """Stop a prefetching thread (the next `next` starts loading again from the current position)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        self._iter = None


class _Prefetcher:
    """Runs an iterator in a daemon thread, `depth` items ahead; re-raises its errors in the consumer."""

    _END = object()

    def __init__(self, source, depth: int, name: str) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(target=self._run, name=f"prefetch {name}", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((None, exc))

    def __iter__(self):
        return self

    def __next__(self):
        item, exc = self._queue.get()
        if exc is not None:
            self.close()
            raise exc
        if item is self._END:
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
