"""Deduper: exact duplicates after normalising, near duplicates by 3-gram Jaccard."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.qa.questions import normalise
from pipeline.qa.dedup import Deduper, _gram_hashes, _IntTable, _repeats


def test_a_new_question_is_accepted_and_counted() -> None:
    d = Deduper(0.7)
    assert d.add("《黑神话：悟空》的主角是谁？") is None
    assert d.accepted == 1 and len(d) == 1


@pytest.mark.parametrize(
    "variant",
    [
        "《黑神话：悟空》的主角是谁？",
        "黑神话悟空的主角是谁?",
        " 黑神话 悟空 的主角是谁 ",
        "《黑神话:悟空》的主角是谁？",
        "“黑神话：悟空”的主角是谁？",
    ],
)
def test_same_text_after_width_punctuation_and_spaces_is_a_duplicate(variant: str) -> None:
    d = Deduper(0.7)
    d.add("《黑神话：悟空》的主角是谁？")
    assert d.add(variant) == "duplicate"
    assert d.rejected == {"duplicate": 1, "near_duplicate": 0}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("《黑神话：悟空》中天命人的师父是谁？", "《黑神话：悟空》中天命人的师父是谁呢？"),
        ("游戏中黄风大圣的弱点是什么？", "游戏中黄风大圣的弱点是什么呀"),
        ("游戏中黄风大圣的弱点是什么？", "请问游戏中黄风大圣的弱点是什么？"),
        ("黑熊精在第一章的哪个地方出现？", "黑熊精在第一章的哪个地方出现呀？"),
        ("What is the story of the Destined One in the game?", "What's the story of the Destined One in the game?"),
    ],
)
def test_a_changed_particle_or_word_is_a_near_duplicate(first: str, second: str) -> None:
    d = Deduper(0.7)
    assert d.add(first) is None
    assert d.add(second) == "near_duplicate"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("《黑神话：悟空》中天命人的师父是谁？", "《黑神话：悟空》中黄眉的法宝有哪些？"),
        ("游戏中黄风大圣的弱点是什么？", "游戏中二郎神的坐骑是什么？"),
        ("战斗系统有几种棍法？", "游戏的配乐由谁创作？"),
        ("How many chapters are there?", "Who composed the music?"),
    ],
)
def test_different_questions_on_the_same_topic_are_kept(first: str, second: str) -> None:
    d = Deduper(0.7)
    assert d.add(first) is None
    assert d.add(second) is None


def test_threshold_decides_near_duplicates() -> None:
    # 3-gram Jaccard of these two is 8/11 ~ 0.73 ("呢" and "？" change the tail).
    a, b = "天命人的师父到底是谁？", "天命人的师父到底是谁呢？"
    strict = Deduper(0.9)
    strict.add(a)
    assert strict.add(b) is None
    loose = Deduper(0.6)
    loose.add(a)
    assert loose.add(b) == "near_duplicate"


def test_short_questions_get_the_exact_check_only() -> None:
    d = Deduper(0.5)
    assert d.add("谁？") is None
    assert d.add("谁?") == "duplicate"
    assert d.add("何？") is None


def test_seed_remembers_earlier_questions_without_counting_them() -> None:
    d = Deduper(0.7)
    d.seed(["《黑神话：悟空》中天命人的师父是谁？", "战斗系统有几种棍法？"])
    assert (d.accepted, d.rejected, len(d)) == (0, {"duplicate": 0, "near_duplicate": 0}, 2)
    assert d.add("战斗系统有几种棍法?") == "duplicate"
    assert d.add("《黑神话：悟空》中天命人的师父是谁呢？") == "near_duplicate"
    assert d.add("游戏的配乐由谁创作？") is None
    assert d.accepted == 1


def test_rejected_questions_are_not_remembered() -> None:
    # A near duplicate must not widen the net for the questions after it.
    d = Deduper(0.7)
    d.add("黑熊精在第一章的哪个地方出现？")
    assert d.add("黑熊精在第一章的哪个地方出现呀？") == "near_duplicate"
    assert len(d) == 1


def test_many_distinct_questions_are_all_kept_and_their_repeats_all_caught() -> None:
    # Enough entries to make the index grow several times; every question is
    # distinct (different numbers and names), every repeat must still be found.
    names = ["黄风大圣", "黑熊精", "二郎神", "黄眉", "百眼魔君", "亢金龙", "虎先锋", "石先锋"]
    qs = [f"第{i:04d}回里{names[i % 8]}用了哪{i % 7 + 1}件法宝？" for i in range(3000)]
    d = Deduper(0.9)
    assert [d.add(q) for q in qs] == [None] * len(qs)
    assert {d.add(q) for q in qs[::7]} == {"duplicate"}
    assert d.accepted == len(qs)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Deduper(0)
    with pytest.raises(ValueError, match="multiple of bands"):
        Deduper(0.7, num_perm=30, bands=8)
    with pytest.raises(ValueError, match="even multiple of bands"):
        Deduper(0.7, num_perm=24, bands=8)


def test_near_duplicates_are_found_among_many_accepted_questions() -> None:
    # Candidates come from LSH buckets; a pair must still be found when the
    # index holds hundreds of other questions on the same topic.
    names = ["黄风大圣", "黑熊精", "二郎神", "黄眉", "百眼魔君", "亢金龙", "虎先锋", "赤尻马猴"]
    things = ["法宝", "坐骑", "弱点", "师父", "住处", "招式", "来历", "结局"]
    qs = [f"{n}的{t}是什么？" for n in names for t in things]
    d = Deduper(0.7)
    assert all(d.add(q) is None for q in qs)
    variants = [q.replace("？", "呢？") for q in qs]
    assert [d.add(v) for v in variants] == ["near_duplicate"] * len(variants)


# --------------------------------------------------------------------------- batches

_BATCH = [
    "《黑神话：悟空》中天命人的师父是谁？",
    "《黑神话：悟空》中天命人的师父是谁呢？",  # near duplicate of the one before, same call
    "战斗系统有几种棍法？",
    "战斗系统有几种棍法?",  # exact duplicate, same call
    "谁？",
    "谁?",  # short: exact check only
    "游戏中黄风大圣的弱点是什么？",
    "《黑神话：悟空》中天命人的师父是谁呢？",  # same text as a rejected one: rejected again
    "游戏的配乐由谁创作？",
]


def test_add_many_gives_what_add_gives_one_question_at_a_time() -> None:
    one, many = Deduper(0.7), Deduper(0.7)
    one.add("黑熊精在第一章的哪个地方出现？")
    many.add("黑熊精在第一章的哪个地方出现？")
    questions = [*_BATCH, "黑熊精在第一章的哪个地方出现呀？"]
    expected = [one.add(q) for q in questions]
    assert expected == [None, "near_duplicate", None, "duplicate", None, "duplicate", None,
                        "near_duplicate", None, "near_duplicate"]
    assert many.add_many(questions) == expected
    assert (many.accepted, many.rejected, len(many)) == (one.accepted, one.rejected, len(one))


def test_seed_in_chunks_remembers_every_question_of_an_iterator() -> None:
    qs = [f"第{i:04d}回里黄风大圣用了哪{i % 7 + 1}件法宝？" for i in range(50)]
    d = Deduper(0.9)
    d.seed(iter(qs), chunk=7)
    assert (len(d), d.accepted) == (50, 0)
    assert d.add_many(qs[::5]) == ["duplicate"] * 10


def _runs(grams: np.ndarray, counts: np.ndarray) -> list[list[int]]:
    ends = np.cumsum(counts)
    return [grams[end - n : end].tolist() for n, end in zip(counts, ends)]


@pytest.mark.parametrize("text", ["《黑神话：悟空》中天命人的师父是谁？", "How many chapters are there?", "abc"])
def test_signatures_are_datasketch_affine32_minhashes(text: str) -> None:
    # The bands are cut from these values: they must stay those of the
    # MinHash the index was designed with (32 permutations, seed 1), for
    # every text of a batch.
    from datasketch import MinHash

    d = Deduper(0.7)
    norms = [normalise(text), "战斗系统有几种棍法"]
    grams, counts = _gram_hashes(norms)
    signatures = d._signatures(grams, counts)
    for row, run in enumerate(_runs(grams, counts)):
        m = MinHash(num_perm=32, seed=1, scheme="affine32", hashfunc=lambda x: x)
        m.update_batch(run)
        assert signatures[row].tolist() == m.hashvalues.tolist()


def test_gram_hashes_are_each_texts_3grams_in_order() -> None:
    norms = ["abcabc", "xyz", "黑神话悟空", "abca"]
    runs = _runs(*_gram_hashes(norms))
    assert [len(r) for r in runs] == [4, 1, 3, 2]  # "abcabc": abc, bca, cab, abc
    assert runs[0][3] == runs[0][0] and len(set(runs[0])) == 3
    assert runs[3] == runs[0][:2]  # "abca": abc, bca
    assert not set(runs[1]) & set(runs[0])  # nothing across the joins of the texts


# --------------------------------------------------------------------------- index table

def _keys(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_int_table_keeps_every_key_through_growth() -> None:
    t = _IntTable(capacity=16)
    keys = np.random.default_rng(1).integers(1, 2**63, size=5000, dtype=np.int64).astype(np.uint64)
    keys[:40] = np.arange(1, 41, dtype=np.uint64) << np.uint64(40)  # one slot: a probe run of 40
    t.add_many(keys[:3000], np.arange(3000, dtype=np.int32))
    t.add_many(keys[3000:], np.arange(3000, 5000, dtype=np.int32))
    assert len(t) == 5000
    slots = t.find(keys)
    assert t.holds(keys, slots).all()
    assert [t.values(int(k), int(s)) for k, s in zip(keys[::997], slots[::997])] == [
        (997 * p,) for p in range(len(keys[::997]))]
    absent = keys + np.uint64(1)
    assert not t.holds(absent, t.find(absent)).any()


def test_int_table_finds_stored_keys_and_misses_absent_ones_across_long_probe_runs() -> None:
    t = _IntTable(capacity=16)
    rng = np.random.default_rng(2)
    stored = rng.integers(1, 2**63, size=3000, dtype=np.int64).astype(np.uint64)
    stored[:40] = np.arange(1, 41, dtype=np.uint64) << np.uint64(40)  # one probe run of 40+
    t.add_many(stored, np.arange(3000, dtype=np.int32))
    absent = np.concatenate((rng.integers(1, 2**63, size=2000, dtype=np.int64).astype(np.uint64),
                             np.arange(41, 60, dtype=np.uint64) << np.uint64(40)))
    for size in (1, 10, len(stored)):  # one call's keys, a seeding chunk
        for start in range(0, len(stored), size * 97 if size < 100 else size):
            keys = stored[start : start + size]
            slots = t.find(keys)
            assert t.holds(keys, slots).all()
            assert [t.values(int(k), int(s)) for k, s in zip(keys, slots)] == [
                (start + n,) for n in range(len(keys))]
    missed = t.find(absent)
    assert not t.holds(absent, missed).any()
    assert (t._keys[missed] == 0).all(), "an absent key's probe ends at an empty slot"


@pytest.mark.parametrize("size", [3, 10, 512])
def test_repeats_are_seen(size: int) -> None:
    keys = np.arange(1, size + 1, dtype=np.uint64) * np.uint64(2**33 + 1)
    assert not _repeats(keys)
    keys[-1] = keys[size // 2]
    assert _repeats(keys)


def test_int_table_gathers_values_of_a_repeated_key_in_order_up_to_a_cap() -> None:
    t = _IntTable(max_per_key=3)
    t.add_many(_keys(7, 9, 7), np.array([1, 2, 3], dtype=np.int32))
    t.add_many(_keys(7, 7), np.array([4, 5], dtype=np.int32))
    assert len(t) == 2
    slots = t.find(_keys(5, 7, 9))
    assert t.holds(_keys(5, 7, 9), slots).tolist() == [False, True, True]
    assert (t.values(7, int(slots[1])), t.values(9, int(slots[2]))) == ([1, 3, 4], (2,))


# --------------------------------------------------------------------------- recall


def _near_pairs(n_pairs: int, grams: int, changed: int, seed: int) -> tuple[list[str], list[str]]:
    """Random texts of ``grams`` 3-grams and variants with the last
    ``changed`` characters replaced: Jaccard (grams - changed) / (grams + changed)."""
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    rng = random.Random(seed)
    originals, variants = [], []
    for _ in range(n_pairs):
        text = "".join(rng.choices(alphabet, k=grams + 2))
        originals.append(text + "？")
        variants.append(text[:-changed] + "".join(rng.choices(alphabet, k=changed)) + "？")
    return originals, variants


@pytest.mark.parametrize(("grams", "changed"), [(17, 3), (27, 3)])  # Jaccard 14/20 = 0.7, 24/30 = 0.8
def test_recall_on_near_duplicate_pairs_is_what_the_bands_promise(grams: int, changed: int) -> None:
    # The docstring's promise: a pair at Jaccard J shares at least one of 8
    # bands of 4 with p = 1 - (1 - J^4)^8, about 0.89 at 0.7 and 0.99 at 0.8.
    jaccard = (grams - changed) / (grams + changed)
    promised = 1 - (1 - jaccard**4) ** 8
    originals, variants = _near_pairs(1000, grams, changed, seed=grams)
    d = Deduper(0.7)
    assert d.add_many(originals) == [None] * len(originals)
    found = sum(d.add(v) == "near_duplicate" for v in variants)
    # 1000 pairs: a standard deviation of about 1 point at p ~ 0.9.
    assert found >= (promised - 0.03) * len(variants)


def test_the_pipeline_never_imports_datasketch_or_scipy() -> None:
    # datasketch pulls in scipy: ~0.3 s of CPU in every run that checks a
    # question. Its permutations are drawn by the Deduper itself; datasketch
    # is only a test dependency, to hold the signatures to its own.
    code = ("import sys, pipeline.qa.stage\n"
            "from pipeline.qa.dedup import Deduper\n"
            "d = Deduper(0.7)\n"
            "assert d.add('《黑神话：悟空》的主角是谁？') is None\n"
            "assert d.add('《黑神话：悟空》的主角是谁呢？') == 'near_duplicate'\n"
            "assert not {'datasketch', 'scipy'} & set(sys.modules), sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize(("num_perm", "bands", "seed"), [(32, 8, 1), (64, 8, 7), (16, 4, 12345)])
def test_permutations_are_drawn_as_datasketch_draws_them(num_perm: int, bands: int, seed: int) -> None:
    from datasketch import MinHash

    a, b = Deduper(0.7, num_perm=num_perm, bands=bands, seed=seed)._permutations()
    theirs = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    assert a.tolist() == [int(x) for x in theirs[0]]
    assert b.tolist() == [int(x) for x in theirs[1]]
