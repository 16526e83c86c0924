"""Continued pre-training on a corpus read as a stream: documents packed on the fly into fixed-length blocks,
with a data position that a resumed run starts from, so host memory stays bounded whatever the token budget.

The packing rule is the in-memory path's (data.examples.pack_blocks; pack_cpt is that generator, listed): bos +
document + eos, concatenated, cut every `seq_len` tokens, the last block of a pass kept short. A stream is read in its own
order (no shuffle: a CPT corpus is read less than once); a budget beyond the corpus reads it again.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from torch.utils.data import IterableDataset

from lorastudy.data.examples import Block, pack_blocks


@dataclass(frozen=True)
class Position:
    """Where a block starts: `block` blocks served before it; `offset` tokens into document `doc` (its bos
    included) of pass `passes`. Stored in every resumable checkpoint, so a resumed run reads on from there."""

    block: int = 0
    doc: int = 0
    offset: int = 0
    passes: int = 0


class PackedStream(IterableDataset):
    """Blocks of a corpus from a position on, remembering where each served block ends (`position_after`).

    `open_texts(skip)` reads the corpus from document `skip` (a local file or a hub stream); only one process
    reads it (Trainer dispatches batches of an IterableDataset from the main process)."""

    def __init__(self, open_texts: Callable[[int], Iterable[str]], tok: Any, seq_len: int,
                 start: Position = Position(), keep: int = 1 << 16) -> None:
        self.open_texts, self.tok, self.seq_len, self.start = open_texts, tok, seq_len, start
        self._after: dict[int, Position] = {start.block: start}
        self._order: deque[int] = deque([start.block])
        self.keep = keep  # positions remembered: far more than the batches Trainer's loader reads ahead

    def __iter__(self) -> Iterator[Block]:
        pos = self.start
        while True:
            served = False
            for block, doc, offset in pack_blocks(self.open_texts(pos.doc), self.tok, self.seq_len,
                                                  first_doc=pos.doc, offset=pos.offset):
                served = True
                pos = Position(pos.block + 1, doc, offset, pos.passes)
                self._remember(pos)
                yield block
            if not served and pos.doc == 0 and pos.offset == 0:
                raise ValueError("the training stream holds no documents")
            pos = Position(pos.block, 0, 0, pos.passes + 1)  # the corpus is exhausted: read it again

    def _remember(self, pos: Position) -> None:
        self._after[pos.block] = pos
        self._order.append(pos.block)
        while len(self._order) > self.keep:
            self._after.pop(self._order.popleft(), None)

    def position_after(self, blocks: int) -> Position:
        """The position after the first `blocks` blocks (counted from the run's start) were served."""
        if blocks not in self._after:
            raise KeyError(f"position after block {blocks} is not known (served up to {self._order[-1]})")
        return self._after[blocks]


class StreamData:
    """A run's CPT data as a stream, for training.fit: each Trainer gets a PackedStream starting where its
    checkpoint left off (so Trainer must not skip batches itself), and checkpoints store the position."""

    skips_itself = True

    def __init__(self, open_texts: Callable[[int], Iterable[str]], tok: Any, seq_len: int) -> None:
        self.open_texts, self.tok, self.seq_len = open_texts, tok, seq_len
        self.current: PackedStream | None = None

    def dataset(self, position: dict[str, int] | None, n_examples: int) -> PackedStream:
        del n_examples  # Trainer's max_steps bounds a stream
        self.current = PackedStream(self.open_texts, self.tok, self.seq_len, Position(**(position or {})))
        return self.current

    def position(self, consumed: int) -> dict[str, int] | None:
        return None if self.current is None else asdict(self.current.position_after(consumed))
