"""The near-duplicate filter of the question stage: exact duplicates by
normalised text, near ones by MinHash/LSH over character grams, in a table
that stays small at a million questions."""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Container, Iterable, Sequence

import numpy as np

from pipeline.qa.questions import normalise

__all__ = ["Deduper"]

_U64 = np.uint64


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, element-wise (uint32, wrapping): the
    pre-mix datasketch's "affine32" scheme applies to every input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, element-wise (uint64, wrapping): a bijection
    that spreads every input bit over all output bits; it turns 1, 2, 3...
    into unrelated per-band salts."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


# An odd 64-bit constant (2^64 / golden ratio) for multiplicative hashing.
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def _gram_hashes(norms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The character 3-grams of each text as 32-bit hashes, all texts in one
    flat uint32 array (in text order, repeats kept), and how many each text
    has. Every text must have at least 3 characters. A 3-gram's code points
    (21 bits each) pack into one 64-bit integer without loss; its hash is the
    top half of that integer's product with an odd constant."""
    lengths = np.fromiter(map(len, norms), dtype=np.intp, count=len(norms))
    points = np.frombuffer("".join(norms).encode("utf-32-le"), dtype="<u4").astype(_U64)
    packed = (points[:-2] << _U64(42)) | (points[1:-1] << _U64(21)) | points[2:]
    # The texts are joined: keep the grams that start and end in one text.
    text = np.repeat(np.arange(len(norms)), lengths)
    grams = ((packed[text[:-2] == text[2:]] * _GOLDEN) >> _U64(32)).astype(np.uint32)
    return grams, lengths - 2


def _digests(norms: Sequence[str]) -> np.ndarray:
    """A non-zero 64-bit digest of each normalised text, for the exact check.
    Python's own string hash (SipHash, 64 bits) is fine here: the index lives
    in one process and is rebuilt by seeding, never stored."""
    digests = np.fromiter(map(hash, norms), dtype=np.int64, count=len(norms)).view(_U64)
    return np.maximum(digests, _U64(1))


# The table grows by half when fuller than this: between 0.4 and 0.6 full,
# 20-30 bytes a key, and probe runs stay short.
_MAX_LOAD = 0.6


def _homes(keys: np.ndarray, capacity: int) -> np.ndarray:
    """Each key's home slot: its high 32 bits scaled to the capacity, which
    need not be a power of two (growing by half wastes less than doubling)."""
    return ((keys >> _U64(32)) * _U64(capacity) >> _U64(32)).astype(np.intp)


def _repeats(keys: np.ndarray) -> bool:
    """Whether some key occurs more than once."""
    ordered = np.sort(keys)
    return bool((ordered[1:] == ordered[:-1]).any())


_WINDOW = np.arange(16)


class _IntTable:
    """64-bit key -> indexes, with open addressing (linear probing) in two
    flat numpy arrays (12 bytes a slot at a load of at most 0.6); a whole
    batch of keys is looked up or inserted in a few numpy calls. Each key has one slot; a
    key that gains a second value moves its values to a small dict of lists
    (rare: only questions sharing a whole band meet there), which stops
    growing at ``max_per_key`` so a band made of very common n-grams cannot
    turn every lookup into hundreds of comparisons. Key 0 marks an empty
    slot."""

    __slots__ = ("_keys", "_vals", "_size", "_multi", "max_per_key")

    def __init__(self, capacity: int = 1024, max_per_key: int = 32) -> None:
        self._keys = np.zeros(capacity, dtype=_U64)
        self._vals = np.zeros(capacity, dtype=np.int32)
        self._size = 0
        self._multi: dict[int, list[int]] = {}
        self.max_per_key = max_per_key

    def __len__(self) -> int:
        return self._size

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Each key's slot, or the empty slot that ends its probe run (keys
        uint64, non-zero). Probes a window of slots per round, so at a load of
        at most 0.6 nearly every key is settled in the first round."""
        slots = _homes(keys, len(self._keys))
        settled = self._probe(keys, slots)
        if not settled.all():
            todo = np.flatnonzero(~settled)
            while len(todo):
                starts = slots[todo]
                settled = self._probe(keys[todo], starts)
                slots[todo] = starts
                todo = todo[~settled]
        return slots

    def _probe(self, keys: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """One round of :meth:`find`: moves each slot (in place) to the first
        one of the window from it that holds the key or is empty, or past the
        window; says which keys were settled."""
        capacity = len(self._keys)
        seen = self._keys[(slots[:, None] + _WINDOW) % capacity]
        stop = (seen == keys[:, None]) | (seen == 0)
        settled = stop.any(axis=1)
        slots += np.where(settled, stop.argmax(axis=1), len(_WINDOW))
        slots %= capacity
        return settled

    def holds(self, keys: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Whether each key is present, given ``slots = find(keys)``."""
        return self._keys[slots] == keys

    def values(self, key: int, slot: int) -> Sequence[int]:
        """The values of ``key``, present at ``slot``."""
        v = int(self._vals[slot])
        return self._multi[key] if v < 0 else (v,)

    def add_many(
        self, keys: np.ndarray, values: np.ndarray, slots: np.ndarray | None = None,
        *, distinct: bool = False,
    ) -> None:
        """Add ``values[i]`` under ``keys[i]`` (uint64, non-zero), in order.
        ``slots``: what :meth:`find` gave for ``keys`` if nothing was added
        since, which saves probing again; ``distinct``: the caller knows no
        key repeats in ``keys``, which saves a sort."""
        if (self._size + len(keys)) > _MAX_LOAD * len(self._keys):
            self._grow(self._size + len(keys))
            slots = None
        if slots is None:
            slots = self.find(keys)
        new = self._keys[slots] == 0
        if not distinct and _repeats(keys):
            first = np.zeros(len(keys), dtype=bool)
            first[np.unique(keys, return_index=True)[1]] = True
            new &= first
        if new.all():
            self._place(keys, values, slots)
            return
        self._place(keys[new], values[new], slots[new])
        # Keys seen before, or repeated in ``keys``: a second value each.
        again = ~new
        for p, slot in zip(np.flatnonzero(again).tolist(), self.find(keys[again]).tolist()):
            self._append(int(keys[p]), slot, int(values[p]))

    def _append(self, key: int, slot: int, value: int) -> None:
        v = int(self._vals[slot])
        if v >= 0:
            self._multi[key] = [v, value]
            self._vals[slot] = -1
        elif len(bucket := self._multi[key]) < self.max_per_key:
            bucket.append(value)

    def _place(self, keys: np.ndarray, values: np.ndarray, slots: np.ndarray) -> None:
        """Put distinct absent keys in the empty slots found for them. Two of
        them may have found the same slot: one wins it, the others probe on."""
        while True:
            self._keys[slots] = keys
            won = self._keys[slots] == keys
            if won.all():
                self._vals[slots] = values
                self._size += len(keys)
                return
            self._vals[slots[won]] = values[won]
            self._size += int(np.count_nonzero(won))
            keys, values = keys[~won], values[~won]
            slots = self.find(keys)

    def _grow(self, size: int) -> None:
        """Rehash into a table big enough for ``size`` keys at a load of at
        most 0.6. Sorted by home slot, each key takes its home or the slot after
        the previous key's, whichever is further: a running maximum, so
        rehashing millions of keys is a few numpy calls."""
        capacity = len(self._keys)
        while size > _MAX_LOAD * capacity:
            capacity += capacity // 2
        used = np.flatnonzero(self._keys)
        home = _homes(self._keys[used], capacity)
        order = np.argsort(home, kind="stable")
        used, home = used[order], home[order]
        steps = np.arange(len(used))
        slots = np.maximum.accumulate(home - steps) + steps
        inside = slots < capacity
        keys, vals = self._keys[used], self._vals[used]
        self._keys = np.zeros(capacity, dtype=_U64)
        self._vals = np.zeros(capacity, dtype=np.int32)
        self._keys[slots[inside]] = keys[inside]
        self._vals[slots[inside]] = vals[inside]
        self._size = int(np.count_nonzero(inside))
        # The few pushed past the end wrap round to the start, as probes do.
        rest = ~inside
        self._place(keys[rest], vals[rest], self.find(keys[rest]))


def _shared_keys(keys: np.ndarray) -> dict[int, set[int]]:
    """For each row of ``keys`` (one row of band keys per text) that shares a
    key with earlier rows, those rows. Usually empty, found with one sort;
    only the keys that repeat are looked at in Python."""
    flat = keys.ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    repeats = np.flatnonzero(ordered[1:] == ordered[:-1])
    if not len(repeats):
        return {}
    involved = np.union1d(repeats, repeats + 1)
    rows_of: dict[int, list[int]] = {}
    for key, pos in zip(ordered[involved].tolist(), order[involved].tolist()):
        rows_of.setdefault(key, []).append(pos // keys.shape[1])
    earlier: dict[int, set[int]] = {}
    for rows in rows_of.values():
        # The stable sort keeps each key's rows in ascending order.
        for k, row in enumerate(rows[1:], 1):
            earlier.setdefault(row, set()).update(r for r in rows[:k] if r != row)
    return earlier


class _Batch:
    """One call's questions, hashed. Every question has a digest; those of 3
    characters or more (``rows``: their positions in the call) also have gram
    hashes (flat, as :func:`_gram_hashes` gives them) and a row of band keys.
    ``keys`` holds the digests then the band keys and ``slots`` their slots
    in the index; ``known`` says which digests are there, ``in_index`` which
    index entries share a band key with each row, ``in_call`` which earlier
    rows do."""

    __slots__ = ("size", "keys", "slots", "known", "in_index", "rows", "grams", "starts", "counts",
                 "distinct", "in_call")

    def __init__(self, digests: np.ndarray, rows: list[int], grams: np.ndarray, counts: np.ndarray,
                 band_keys: np.ndarray, index: _IntTable) -> None:
        self.size, self.rows = len(digests), rows
        self.grams, self.counts = grams, counts
        self.starts = np.cumsum(counts) - counts
        self.keys = np.concatenate((digests, band_keys.ravel()))
        self.slots = index.find(self.keys)
        held = index.holds(self.keys, self.slots)
        known = held[: self.size]
        self.known: list[bool] = known.tolist()  # whether each question's digest is in the index
        # Row -> index entries sharing a band key with it; a known question
        # needs none.
        self.in_index: dict[int, set[int]] = {}
        band_held = held[self.size :]
        if band_held.any():
            band_held = band_held.reshape(band_keys.shape) & ~known[rows][:, None]
            for pos in np.flatnonzero(band_held).tolist():
                key, slot = int(band_keys.flat[pos]), int(self.slots[self.size + pos])
                self.in_index.setdefault(pos // band_keys.shape[1], set()).update(index.values(key, slot))
        # Usually every key of a call is distinct: no question repeats another
        # and no two share a band key, and then there is nothing to match up.
        self.distinct = not _repeats(self.keys)
        self.in_call = {} if self.distinct else _shared_keys(band_keys)

    def grams_of(self, row: int) -> set[int]:
        start = int(self.starts[row])
        return set(self.grams[start : start + int(self.counts[row])].tolist())


class Deduper:
    """Rejects exact duplicates (after :func:`normalise`) and near duplicates
    (character 3-gram Jaccard similarity >= ``threshold``) of accepted questions.

    Candidates come from MinHash signatures (datasketch's "affine32" scheme)
    cut into bands; a candidate is confirmed by the exact Jaccard of the two
    3-gram sets, so the bands are tuned for recall at the threshold (32
    permutations in 8 bands of 4 find a pair at Jaccard 0.7 with p ~ 0.89, at
    0.8 with p ~ 0.99) while unrelated questions rarely meet in a bucket.

    Per question this keeps a 64-bit digest and one 64-bit key per band, all
    in one hash table that maps them to the question's number, and the 3-gram
    hashes (4 bytes each) in one flat array: a few hundred bytes. Questions
    shorter than 3 characters after normalising get the exact check only.

    A call's questions are hashed, signed, looked up and inserted together in
    numpy, with decisions as if they came one at a time: Python only loops
    over the questions and over the rare candidates.
    """

    NGRAM = 3  # _gram_hashes packs exactly three code points

    def __init__(
        self, threshold: float = 0.7, *, num_perm: int = 32, bands: int = 8, seed: int = 1
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if bands < 1 or num_perm % (2 * bands):
            # Band keys read a band's 32-bit values two at a time.
            raise ValueError(f"num_perm ({num_perm}) must be an even multiple of bands ({bands})")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands = bands
        self._seed = seed
        self._perms: tuple[np.ndarray, np.ndarray] | None = None  # see _permutations
        # One salt per band, so equal values in two bands make two keys.
        self._salts = _mix64(np.arange(1, bands + 1, dtype=_U64))
        self._index = _IntTable()
        # Question number n's gram hashes are _grams[_offsets[n]:_offsets[n + 1]].
        self._grams = array("I")
        self._offsets = array("Q", [0])
        self.accepted = 0
        self.rejected: dict[str, int] = {"duplicate": 0, "near_duplicate": 0}

    def __len__(self) -> int:
        """How many distinct questions are remembered (seeded ones included)."""
        return len(self._offsets) - 1

    def _permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """The affine permutations ``h -> a * h + b mod 2^32`` (``a`` odd, so
        each is a bijection), drawn as datasketch's "affine32" scheme draws
        them, so signatures are that scheme's (a test holds them to
        datasketch's own)."""
        if self._perms is None:
            gen = np.random.RandomState(self._seed)
            a = gen.randint(0, 1 << 31, self.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
            b = gen.randint(0, 1 << 32, self.num_perm, dtype=np.uint32)
            self._perms = (a, b)
        return self._perms

    def _signatures(self, grams: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """MinHash signatures of many texts at once, shape (len(counts),
        num_perm), uint32, from :func:`_gram_hashes`' output: the same values
        datasketch's "affine32" scheme gives (MurmurHash3 fmix32 pre-mix, then
        ``a * h + b`` wrapping at 2^32), without a MinHash object per text."""
        a, b = self._permutations()
        phv = _fmix32(grams)[:, None] * a + b  # uint32 arithmetic: the wraparound is the modulo
        return np.minimum.reduceat(phv, np.cumsum(counts) - counts, axis=0)

    def _band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One non-zero 64-bit key per band of each signature, shape (rows,
        bands): the band's values read as 64-bit words (two at a time) and
        folded by xor-multiply, each a bijection of the key so far, so two
        bands collide with p ~ 2^-64. The product's high bits are well mixed
        (they pick the slot); the last xor-shift mixes them into the low ones."""
        words = np.ascontiguousarray(signatures).view(_U64).reshape(len(signatures), self.bands, -1)
        keys = self._salts
        for j in range(words.shape[2]):
            keys = (keys ^ words[:, :, j]) * _GOLDEN
        return np.maximum(keys ^ (keys >> _U64(32)), _U64(1))

    def _hash(self, norms: list[str]) -> _Batch:
        rows = [i for i, norm in enumerate(norms) if len(norm) >= self.NGRAM]
        if rows:
            grams, counts = _gram_hashes([norms[i] for i in rows])
            band_keys = self._band_keys(self._signatures(grams, counts))
        else:
            grams, counts = np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.intp)
            band_keys = np.zeros((0, self.bands), dtype=_U64)
        return _Batch(_digests(norms), rows, grams, counts, band_keys, self._index)

    def _stored_grams(self, idx: int) -> set[int]:
        return set(self._grams[self._offsets[idx] : self._offsets[idx + 1]])

    def _similar(self, mine: set[int], other: set[int]) -> bool:
        inter = len(mine & other)
        return bool(inter) and inter >= self.threshold * (len(mine) + len(other) - inter)

    def _is_near(self, batch: _Batch, row: int, accepted: Container[int]) -> bool:
        """Whether text ``row`` of ``batch`` is a near duplicate of a question
        in the index or of an ``accepted`` row before it."""
        stored = batch.in_index.get(row, ())
        partners = [r for r in batch.in_call.get(row, ()) if r in accepted]
        if not stored and not partners:
            return False
        mine = batch.grams_of(row)
        others = [self._stored_grams(idx) for idx in sorted(stored)]
        others += [batch.grams_of(r) for r in sorted(partners)]
        return any(self._similar(mine, other) for other in others)

    def _check_many(self, questions: Iterable[str], *, count: bool) -> list[str | None]:
        """Check-and-remember each question in order, as if one at a time:
        a question is checked against the ones before it in the same call."""
        batch = self._hash([normalise(q) for q in questions])
        reasons, taken = self._decide(batch)
        if count:
            self.accepted += reasons.count(None)
            for reason in self.rejected:
                self.rejected[reason] += reasons.count(reason)
        new = [i for i, reason in enumerate(reasons) if reason is None]
        if new:
            self._remember(batch, new, taken)
        return reasons

    def _decide(self, batch: _Batch) -> tuple[list[str | None], list[int]]:
        """Each question's reason (None: accepted), and the rows accepted."""
        if batch.distinct and not batch.in_index and not any(batch.known):
            return [None] * batch.size, list(range(len(batch.rows)))  # nothing met anything
        first_of: dict[int, int] = {}
        repeat_of = [first_of.setdefault(d, i) for i, d in enumerate(batch.keys[: batch.size].tolist())]
        row_of = {i: r for r, i in enumerate(batch.rows)}
        reasons: list[str | None] = []
        taken: dict[int, None] = {}  # rows accepted, in order
        for i in range(batch.size):
            reason: str | None = None
            if batch.known[i]:
                reason = "duplicate"
            elif repeat_of[i] != i:
                # The same text as before in this call gets the same answer.
                earlier = reasons[repeat_of[i]]
                reason = "duplicate" if earlier is None else earlier
            elif (r := row_of.get(i)) is not None:
                if self._is_near(batch, r, taken):
                    reason = "near_duplicate"
                else:
                    taken[r] = None
            reasons.append(reason)
        return reasons, list(taken)

    def _remember(self, batch: _Batch, new: list[int], taken: list[int]) -> None:
        """Give the accepted questions (``new``, positions in the call;
        ``taken``, the rows of those with gram hashes) the next numbers, store
        their gram hashes, and index their digests and band keys."""
        first = len(self)
        numbers = np.arange(first, first + len(new), dtype=np.int32)
        if len(new) == batch.size and len(taken) == batch.size:
            # The usual call: every question accepted, none too short.
            keys, slots, counts, grams = batch.keys, batch.slots, batch.counts, batch.grams
            long_numbers = numbers
        else:
            long = np.isin(new, np.asarray(batch.rows, dtype=np.intp)[taken])
            long_numbers = numbers[long]
            counts = np.zeros(len(new), dtype=np.intp)
            counts[long] = batch.counts[taken]
            keep = np.zeros(len(batch.rows), dtype=bool)
            keep[taken] = True
            grams = batch.grams[np.repeat(keep, batch.counts)]
            # Positions in batch.keys: the digests, then each taken row's band keys.
            band_pos = batch.size + (np.asarray(taken, dtype=np.intp)[:, None] * self.bands
                                     + np.arange(self.bands)).ravel()
            pos = np.concatenate((np.asarray(new, dtype=np.intp), band_pos))
            keys, slots = batch.keys[pos], batch.slots[pos]
        self._grams.frombytes(grams.tobytes())
        self._offsets.frombytes((np.cumsum(counts, dtype=_U64) + _U64(self._offsets[-1])).tobytes())
        values = np.concatenate((numbers, np.repeat(long_numbers, self.bands)))
        self._index.add_many(keys, values, slots, distinct=batch.distinct)

    def add(self, q: str) -> str | None:
        """Accept ``q`` (None) or say why not: "duplicate" or "near_duplicate"."""
        return self._check_many((q,), count=True)[0]

    def add_many(self, questions: Iterable[str]) -> list[str | None]:
        """:meth:`add` for each question in order (each one is checked against
        the questions before it, in the index and in ``questions``), with the
        work for all of them done at once."""
        return self._check_many(questions, count=True)

    def seed(self, questions: Iterable[str], *, chunk: int = 4096) -> None:
        """Remember questions accepted by an earlier run, without counting them.
        Works through ``questions`` ``chunk`` at a time, so an iterator over a
        large ledger is never held whole."""
        it = iter(questions)
        while batch := list(itertools.islice(it, chunk)):
            self._check_many(batch, count=False)
