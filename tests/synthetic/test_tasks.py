"""Synthetic task generators: labels against brute-force definitions, seeding, disjoint splits."""

import itertools

import pytest
import torch

from pararnn.synthetic.data import disjoint_splits, sequence_hashes
from pararnn.synthetic.tasks import IGNORE, MQAR, TASKS, get_task


def generate(name, n=16, length=40, seed=0):
    return get_task(name).generate(n, length, torch.Generator().manual_seed(seed))


def brute_parity(seq):
    out, acc = [], 0
    for bit in seq:
        acc ^= bit
        out.append(acc)
    return out


def brute_modcount(seq, m):
    return [sum(seq[:t + 1]) % m for t in range(len(seq))]


def brute_s5(seq):
    perms = list(itertools.permutations(range(5)))
    out, state = [], tuple(range(5))
    for g in seq:
        g = perms[g]
        state = tuple(g[state[i]] for i in range(5))  # g after the product so far
        out.append(perms.index(state))
    return out


def brute_mqar(seq, pairs):
    table = {seq[2 * i]: seq[2 * i + 1] for i in range(pairs)}
    return [IGNORE] * (2 * pairs) + [table[k] for k in seq[2 * pairs:]]


def brute_khop(seq):
    def follow(a, t):  # the token after the latest j < t with x_j = a
        for j in range(t - 1, -1, -1):
            if seq[j] == a:
                return seq[j + 1]
        return None
    out = []
    for t, token in enumerate(seq):
        first = follow(token, t)
        second = None if first is None else follow(first, t)
        out.append(IGNORE if second is None else second)
    return out


BRUTE = {"parity": brute_parity, "modcount": lambda s: brute_modcount(s, TASKS["modcount"].num_classes),
         "s5": brute_s5, "mqar": lambda s: brute_mqar(s, TASKS["mqar"].pairs), "khop": brute_khop}


@pytest.mark.parametrize("name", list(TASKS))
def test_labels_match_brute_force(name):
    inputs, labels = generate(name)
    task = get_task(name)
    assert inputs.shape == labels.shape == (16, 40) and inputs.dtype == labels.dtype == torch.int64
    assert 0 <= int(inputs.min()) and int(inputs.max()) < task.vocab_size
    scored = labels[labels != IGNORE]
    assert scored.numel() > 0 and 0 <= int(scored.min()) and int(scored.max()) < task.num_classes
    for seq, lab in zip(inputs.tolist(), labels.tolist()):
        assert lab == BRUTE[name](seq)


def test_tasks_describe_themselves():
    assert get_task("mqar").describe() == {"name": "mqar", "vocab_size": 32, "num_classes": 32,
                                           "pairs": 4, "keys": 16, "values": 16}
    assert get_task("s5").describe()["num_classes"] == 120 and repr(get_task("khop")) == "KHop(k=2, symbols=8)"


def test_mqar_keys_are_distinct_and_queries_come_from_the_pairs():
    task = get_task("mqar")
    inputs, _ = generate("mqar", n=64)
    keys = inputs[:, 0:2 * task.pairs:2]
    assert all(len(set(row)) == task.pairs for row in keys.tolist())
    assert bool((inputs[:, 1:2 * task.pairs:2] >= task.keys).all())
    queries = inputs[:, 2 * task.pairs:]
    assert bool((queries[:, :, None] == keys[:, None, :]).any(-1).all())


def test_mqar_hand_worked_example():
    # Zoology's multi-query associative recall: pairs k v, then queries scored with the
    # value of their key; the pair positions carry no loss
    task = MQAR(pairs=2, keys=4, values=4)  # keys 0..3, values 4..7
    inputs = torch.tensor([[2, 5, 0, 7, 0, 2, 2, 0]])
    assert task.labels(inputs).tolist() == [[IGNORE, IGNORE, IGNORE, IGNORE, 7, 5, 5, 7]]


def test_khop_hand_worked_example():
    # successor table as it stands at t: 0->1, 1->0 (t=2); 0->2, 2->0 (t=4); 0->1 (t=5)
    inputs = torch.tensor([[0, 1, 0, 2, 0, 1]])
    assert get_task("khop").labels(inputs).tolist() == [[IGNORE, IGNORE, 0, IGNORE, 0, 1]]


def test_khop_scores_most_positions_of_long_sequences():
    _, labels = generate("khop", n=64, length=100)
    assert float((labels[:, 50:] != IGNORE).float().mean()) > 0.95
    assert bool((labels[:, 0] == IGNORE).all())  # nothing has a successor yet


@pytest.mark.parametrize("name", list(TASKS))
def test_seed_determines_the_data(name):
    a, b, c = generate(name, seed=3), generate(name, seed=3), generate(name, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_splits_are_disjoint_even_where_collisions_are_likely():
    # parity at length 10 has 1024 sequences: 700 random draws repeat many of them
    task = get_task("parity")
    splits = disjoint_splits(task, 10, {"train": 400, "val": 100, "test": 200}, seed=0)
    digests = {name: sequence_hashes(x) for name, (x, _) in splits.items()}
    assert {name: len(d) for name, d in digests.items()} == {"train": 400, "val": 100, "test": 200}
    everything = [h for d in digests.values() for h in d]
    assert len(set(everything)) == len(everything)
    for x, y in splits.values():
        assert torch.equal(y, task.labels(x))
    again = disjoint_splits(task, 10, {"train": 400, "val": 100, "test": 200}, seed=0)
    assert all(torch.equal(splits[k][0], again[k][0]) for k in splits)


def test_too_many_samples_for_the_length_is_an_error():
    with pytest.raises(ValueError, match="too few distinct sequences"):
        disjoint_splits(get_task("parity"), 4, {"train": 10, "test": 10}, seed=0, max_rounds=5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="length must be an int >= 9 for mqar"):
        generate("mqar", length=8)
    with pytest.raises(ValueError, match="n must be a positive int"):
        generate("parity", n=0)
    with pytest.raises(ValueError, match="size of split 'val'"):
        disjoint_splits(get_task("parity"), 8, {"train": 4, "val": 0}, seed=0)
