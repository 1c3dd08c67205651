"""Real-text byte-level data for the real-work validation (docs/VALIDATION.md).

Pure Python (no torch, no numpy): testable on CI and on any CPU.

Tokens: one token per byte (0..255) plus three specials, vocabulary VOCAB_SIZE = 264 (a multiple
of 8; ids 259..263 are never produced):
    BOS = 256 opens every file, EOS = 257 closes it, PAD = 258 (generate()'s pad id only).

Order and split (everything is a function of the roots' contents and the seed):
  1. list_files(): every regular file under each root (symlinks not followed), skipping files that
     are empty, larger than max_file_bytes, or contain a NUL byte in their first 8 KiB (binary);
     sorted by (root index, path relative to the root).
  2. The list is shuffled with random.Random(seed).
  3. split_of(): a file is held out when the first 8 hex digits of sha256(content), read as an
     integer / 2**32, are below heldout_fraction. The split is a property of the content: the same
     file (or a copy of it elsewhere) is always on the same side, whatever the seed.
  4. Files are read in the shuffled order; each contributes BOS + bytes + EOS to its split's token
     stream until that split holds max_tokens[split] tokens (later files of a full split are
     skipped, the other split keeps filling).
  5. Each stream is cut into consecutive sequences of seq_len tokens (the tail is dropped); a
     sequence may span file boundaries (BOS/EOS mark them), as in usual LM pre-training.
  6. batches(): the sequences of a split are shuffled with random.Random(seed + 1000003 * epoch)
     and grouped batch_size at a time (an incomplete last batch is dropped).
"""

from __future__ import annotations

import hashlib
import os
import random
from array import array
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

BOS = 256
EOS = 257
PAD = 258
VOCAB_SIZE = 264

DEFAULT_ROOTS = ("/usr/lib/python3.12", "/usr/share/common-licenses")


def is_text(head: bytes) -> bool:
    """A file is taken as text when its first bytes hold no NUL."""
    return b"\x00" not in head


def list_files(roots: Sequence[str], max_file_bytes: int = 1 << 20) -> List[Tuple[int, str, str]]:
    """(root index, relative path, absolute path) of every text file under the roots, sorted.

    Missing roots are skipped (the caller reports them: CorpusStats.missing_roots)."""
    found = []
    for ri, root in enumerate(roots):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    size = os.path.getsize(path)
                    if size == 0 or size > max_file_bytes:
                        continue
                    with open(path, "rb") as f:
                        if not is_text(f.read(8192)):
                            continue
                except OSError:
                    continue
                found.append((ri, os.path.relpath(path, root), path))
    found.sort(key=lambda t: (t[0], t[1]))
    return found


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_of(digest: str, heldout_fraction: float) -> str:
    """"heldout" or "train" from a sha256 hex digest (see the module docstring)."""
    return "heldout" if int(digest[:8], 16) / float(1 << 32) < heldout_fraction else "train"


def encode(data: bytes) -> array:
    """BOS + bytes + EOS as uint16 tokens."""
    out = array("H", [BOS])
    out.extend(data)  # array('H').extend(bytes) appends one element per byte
    out.append(EOS)
    return out


def decode(tokens) -> str:
    """Text of the byte tokens (specials dropped; invalid UTF-8 replaced)."""
    return bytes(int(t) for t in tokens if 0 <= int(t) < 256).decode("utf-8", errors="replace")


@dataclass
class CorpusStats:
    roots: List[str]
    missing_roots: List[str]
    files_listed: int = 0
    files_used: Dict[str, int] = field(default_factory=lambda: {"train": 0, "heldout": 0})
    bytes_used: Dict[str, int] = field(default_factory=lambda: {"train": 0, "heldout": 0})
    tokens: Dict[str, int] = field(default_factory=lambda: {"train": 0, "heldout": 0})
    sequences: Dict[str, int] = field(default_factory=lambda: {"train": 0, "heldout": 0})
    first_files: Dict[str, List[str]] = field(default_factory=lambda: {"train": [], "heldout": []})
    fingerprint: str = ""  # sha256 over the token streams: equal fingerprints, equal data

    def to_json(self) -> dict:
        return dict(self.__dict__)


class ByteCorpus:
    """Fixed-length byte-token sequences of real text, split into train and held-out by file hash.

    corpus = ByteCorpus(["/usr/share/common-licenses"], seq_len=2048, seed=0)
    for batch in corpus.batches("train", batch_size=4, epoch=0): ...   # lists of seq_len ints
    """

    def __init__(self, roots: Sequence[str] = DEFAULT_ROOTS, seq_len: int = 2048, seed: int = 0,
                 heldout_fraction: float = 0.05, max_tokens: Optional[Dict[str, int]] = None,
                 max_file_bytes: int = 1 << 20):
        if seq_len < 2:
            raise ValueError("seq_len must be at least 2")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError("heldout_fraction must be in (0, 1)")
        self.roots = [str(r) for r in roots]
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.heldout_fraction = float(heldout_fraction)
        caps = {"train": 1 << 62, "heldout": 1 << 62}
        caps.update(max_tokens or {})
        self.max_tokens = caps
        files = list_files(self.roots, max_file_bytes)
        random.Random(self.seed).shuffle(files)
        self.stats = CorpusStats(roots=self.roots,
                                 missing_roots=[r for r in self.roots if not os.path.isdir(r)],
                                 files_listed=len(files))
        streams = {"train": array("H"), "heldout": array("H")}
        for _, rel, path in files:
            if all(len(streams[s]) >= caps[s] for s in streams):
                break
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            s = split_of(content_hash(data), self.heldout_fraction)
            if len(streams[s]) >= caps[s]:
                continue
            streams[s].extend(encode(data))
            self.stats.files_used[s] += 1
            self.stats.bytes_used[s] += len(data)
            if len(self.stats.first_files[s]) < 5:
                self.stats.first_files[s].append(path)
        h = hashlib.sha256()
        self._seqs: Dict[str, List[array]] = {}
        for s in ("train", "heldout"):
            st = streams[s][:caps[s]] if len(streams[s]) > caps[s] else streams[s]
            n = len(st) // self.seq_len
            self._seqs[s] = [st[i * self.seq_len:(i + 1) * self.seq_len] for i in range(n)]
            self.stats.tokens[s] = n * self.seq_len
            self.stats.sequences[s] = n
            h.update(s.encode())
            h.update(st[:n * self.seq_len].tobytes())
        self.stats.fingerprint = h.hexdigest()[:16]

    def sequences(self, split: str) -> List[List[int]]:
        return [list(x) for x in self._seqs[split]]

    def num_sequences(self, split: str) -> int:
        return len(self._seqs[split])

    def batches(self, split: str, batch_size: int, epoch: int = 0) -> Iterator[List[List[int]]]:
        """Deterministic shuffled batches (module docstring, step 6)."""
        order = list(range(len(self._seqs[split])))
        random.Random(self.seed + 1000003 * int(epoch)).shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield [list(self._seqs[split][j]) for j in order[i:i + batch_size]]

    def take_batches(self, split: str, batch_size: int, steps: int) -> List[List[List[int]]]:
        """`steps` batches, cycling through epochs (epoch e uses its own shuffle)."""
        out: List[List[List[int]]] = []
        epoch = 0
        if len(self._seqs[split]) < batch_size:
            raise ValueError(f"{split}: {len(self._seqs[split])} sequences of {self.seq_len} tokens, "
                             f"fewer than one batch of {batch_size}")
        while len(out) < steps:
            for b in self.batches(split, batch_size, epoch):
                out.append(b)
                if len(out) == steps:
                    break
            epoch += 1
        return out

    def prompts(self, count: int, length: int) -> List[List[int]]:
        """The first `length` tokens of the first `count` held-out sequences (in stream order)."""
        if length > self.seq_len:
            raise ValueError("prompt length exceeds seq_len")
        seqs = self._seqs["heldout"]
        if len(seqs) < count:
            raise ValueError(f"only {len(seqs)} held-out sequences, {count} prompts asked")
        return [list(seqs[i][:length]) for i in range(count)]
