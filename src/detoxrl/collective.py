"""What the processes of a data-parallel run agree on: sums, means, maxima and gathered lists over
processes (accelerate's collectives), and "the main process first". With one process every function
returns its input unchanged, so a one-process run does no communication at all."""

from __future__ import annotations

import torch

from detoxrl.errors import DetoxError


class Processes:
    """The collectives of one launch: ``state`` is accelerate's ``PartialState``, ``device`` where its
    tensors travel (the process's accelerator device; the CPU with gloo)."""

    def __init__(self, state, device) -> None:
        self.state, self.device = state, device

    @property
    def single(self) -> bool:
        return self.state.num_processes == 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes (on the CPU)."""
        if self.single:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor.to(self.device), reduction="sum").cpu()

    def mean_of_floats(self, stats: dict[str, float]) -> dict[str, float]:
        """Update statistics: each process has the mean over its shards; this is the mean over all shards.
        (Integer entries, such as the applied and skipped counts, are the same everywhere: every process
        takes every decision.)"""
        keys = [key for key, value in stats.items() if isinstance(value, float)]
        if self.single or not keys:
            return stats
        from accelerate.utils import reduce

        means = reduce(torch.tensor([stats[key] for key in keys], dtype=torch.float64, device=self.device), reduction="mean")
        return {**stats, **dict(zip(keys, means.tolist()))}

    def max(self, values: dict[str, float]) -> dict[str, float]:
        """The maximum over processes of each value (times: a step takes as long as its slowest process)."""
        if self.single:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return dict(zip(values, tensor.tolist()))

    def gather_lists(self, local: list[list]) -> list:
        """The concatenation, in shard order, of every process's lists (Python objects)."""
        mine = [item for part in local for item in part]
        if self.single:
            return mine
        from accelerate.utils import gather_object

        return gather_object(mine)

    def all_agree(self, ok: bool) -> bool:
        """True when every process says ``ok``: a minibatch is skipped by all or by none."""
        if self.single:
            return ok
        from accelerate.utils import reduce

        return float(reduce(torch.tensor([0.0 if ok else 1.0], device=self.device), reduction="sum")) == 0.0


def main_process_first(state, fn):
    """``fn()`` on the main process, then on the others (which then find what it wrote: the tidied run
    folder, filled caches). A :class:`DetoxError` on the main process is raised by every process (the
    others quietly: the main one says it), so that none of them waits for it for ever."""
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    if state.is_main_process:
        try:
            result = fn()
        except DetoxError as e:
            broadcast_object_list([(type(e), str(e))])
            raise
        except BaseException as e:
            broadcast_object_list([(DetoxError, f"the main process failed ({type(e).__name__}: {e})")])
            raise
        broadcast_object_list([None])
        return result
    failure = [None]
    broadcast_object_list(failure)
    if failure[0] is not None:
        kind, message = failure[0]
        error = kind(message)
        error.quiet = True
        raise error
    return fn()
