"""Which cases one part of a batch runs: nnU-Net's convention (`nnUNetv2_predict -num_parts N
-part_id K`), sorted case IDs and every N-th one starting at K.

N processes (GPUs, machines, array tasks) given the same input and K = 0..N-1 therefore cover every
case exactly once without talking to each other.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


class ShardError(ValueError):
    """Shard options that cannot describe a part of a batch (a usage error)."""


def check_shard(num_parts: int, part_id: int) -> None:
    if num_parts < 1:
        raise ShardError(f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ShardError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")


def select_part(cases: Sequence[T], num_parts: int, part_id: int, key=lambda case: case.case_id) -> list[T]:
    """The cases of part `part_id` of `num_parts`: sorted by `key`, then every num_parts-th from part_id."""
    check_shard(num_parts, part_id)
    return sorted(cases, key=key)[part_id::num_parts]
