"""Downloaded bodies handed from the event loop to the decode workers through shared memory.

The event loop copies each batch of bodies into one region of a :class:`TransferArena`, an anonymous shared memory
map made before the decode workers fork (so they inherit it), and sends the workers only :class:`Shared` offsets.
Nothing is pickled through the pool's pipe and no file is written on the way: a file per body costs the event
loop a create and a write (a quarter of its time on a busy disk) and the worker an open and a read. A worker
writes only the images it stores. A batch that does not fit in the free space is handed over another way (the
caller spools it to files), so a few huge images never stall the downloads.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

__all__ = ["Shared", "TransferArena", "attach", "read_shared"]


@dataclass(frozen=True)
class Shared:
    """A downloaded body in the decode workers' :class:`TransferArena`: ``length`` bytes at ``offset``."""

    offset: int
    length: int


class TransferArena:
    """A shared memory region of ``size`` bytes for bodies in flight to the decode workers.

    Only the event loop allocates: :meth:`place` copies a batch into one contiguous free region (first fit) and
    :meth:`release` frees it when the batch's results are back. Free regions are kept sorted and merged.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"a transfer arena needs a positive size, not {size}")
        self.size = size
        self.memory = mmap.mmap(-1, size)  # anonymous and shared: forked workers see what the parent writes
        self._free: list[tuple[int, int]] = [(0, size)]  # (offset, length), sorted by offset, never adjacent

    @property
    def free_bytes(self) -> int:
        """Bytes not held by any placed batch."""
        return sum(length for _, length in self._free)

    def place(self, bodies: list[bytes]) -> tuple[tuple[int, int], list[Shared]] | None:
        """Copy ``bodies`` into one free region; return ``(region, one Shared per body)``, or None when no free
        region is large enough (nothing is copied then)."""
        need = sum(len(body) for body in bodies)
        if need == 0:
            return None
        for i, (start, length) in enumerate(self._free):
            if length >= need:
                if length == need:
                    del self._free[i]
                else:
                    self._free[i] = (start + need, length - need)
                break
        else:
            return None
        shared = []
        at = start
        for body in bodies:
            self.memory[at : at + len(body)] = body
            shared.append(Shared(at, len(body)))
            at += len(body)
        return (start, need), shared

    def release(self, region: tuple[int, int]) -> None:
        """Free a region returned by :meth:`place` (once, after the workers are done with it)."""
        start, length = region
        free = self._free
        i = 0
        while i < len(free) and free[i][0] < start:
            i += 1
        if (i and free[i - 1][0] + free[i - 1][1] > start) or (i < len(free) and start + length > free[i][0]):
            raise ValueError(f"region {region} overlaps free space: released twice?")
        free.insert(i, (start, length))
        if i + 1 < len(free) and start + length == free[i + 1][0]:  # merge with the next free region
            free[i] = (start, length + free.pop(i + 1)[1])
        if i and free[i - 1][0] + free[i - 1][1] == start:  # and with the previous one
            prev_start, prev_length = free[i - 1]
            free[i - 1] = (prev_start, prev_length + free.pop(i)[1])

    def close(self) -> None:
        self.memory.close()


_attached: mmap.mmap | None = None


def attach(memory: mmap.mmap) -> None:
    """Decode-pool initializer: remember the arena this worker reads :class:`Shared` bodies from."""
    global _attached
    _attached = memory


def read_shared(source: Shared) -> bytes:
    """The bytes of ``source`` (in a decode worker of a pool started with :func:`attach`)."""
    if _attached is None:
        raise RuntimeError(
            "no transfer arena attached: Shared bodies are read only in the decode pool's workers"
        )
    return _attached[source.offset : source.offset + source.length]
