import pytest
import torch

from training.miners.in_batch import (
    MINERS,
    AllPairsMiner,
    AllTripletsMiner,
    BatchHardMiner,
    HardCasesMiner,
    SemiHardMiner,
)

# 1-D embeddings, two classes: class 0 at 0, 1, 3; class 1 at 1.2, 10
EMB = torch.tensor([[0.0], [1.0], [3.0], [1.2], [10.0]])
LABELS = torch.tensor([0, 0, 0, 1, 1])


def test_all_pairs_counts():
    a1, p, a2, n = AllPairsMiner()(EMB, LABELS)
    assert len(a1) == 3 + 1  # C(3,2) + C(2,2)
    assert len(a2) == 3 * 2
    assert (LABELS[a1] == LABELS[p]).all() and (LABELS[a2] != LABELS[n]).all()


def test_all_triplets_are_valid():
    a, p, n = AllTripletsMiner()(EMB, LABELS)
    assert len(a) == 3 * 2 * 2 + 2 * 1 * 3
    assert (LABELS[a] == LABELS[p]).all() and (LABELS[a] != LABELS[n]).all() and (a != p).all()


def test_batch_hard_picks_farthest_positive_and_nearest_negative():
    a, p, n = BatchHardMiner()(EMB, LABELS)
    got = {int(i): (int(j), int(k)) for i, j, k in zip(a, p, n, strict=True)}
    assert got[0] == (2, 3)  # farthest positive of 0 is 3.0 (idx 2), nearest negative 1.2 (idx 3)
    assert got[3] == (4, 1)  # anchor 1.2: positive 10, nearest negative 1.0


def test_semi_hard_band():
    m = SemiHardMiner(margin=0.5)
    a, p, n = m(EMB, LABELS)
    d = lambda i, j: (EMB[i] - EMB[j]).abs().squeeze(-1)  # noqa: E731
    assert len(a) > 0 and m.last_count == len(a)
    assert ((d(a, n) > d(a, p)) & (d(a, n) < d(a, p) + 0.5)).all()


def test_hard_cases_band():
    a, p, n = HardCasesMiner(band=0.3)(EMB, LABELS)
    d = lambda i, j: (EMB[i] - EMB[j]).abs().squeeze(-1)  # noqa: E731
    assert len(a) > 0
    assert ((d(a, n) - d(a, p)).abs() < 0.3).all()


@pytest.mark.parametrize("name", sorted(MINERS))
def test_every_miner_returns_label_consistent_indices(name):
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(16, 4), dim=1)
    labels = torch.arange(4).repeat_interleave(4)
    out = MINERS[name]()(emb, labels)
    if len(out) == 3:
        a, p, n = out
        assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()
    else:
        a1, p, a2, n = out
        assert (labels[a1] == labels[p]).all() and (labels[a2] != labels[n]).all()
