import math

import pytest
import torch

from training.distances import CosineDistance, LpDistance
from training.losses import LOSSES, get_loss
from training.losses.contrastive import ContrastiveLoss
from training.losses.triplet import TripletLoss


def _pairs(a1, p, a2, n):
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return t(a1), t(p), t(a2), t(n)


def test_contrastive_known_value():
    # points on a line: distances d(0,1)=1 (positive), d(0,2)=0.5 (negative), margin 1
    emb = torch.tensor([[0.0], [1.0], [0.5]])
    labels = torch.tensor([0, 0, 1])
    loss = ContrastiveLoss(margin=1.0)(emb, labels, _pairs([0], [1], [0], [2]))
    # (1^2 + max(0, 1 - 0.5)^2) / 2
    assert loss.item() == pytest.approx((1 + 0.25) / 2, rel=1e-5)


def test_contrastive_squared_margin_variant():
    emb = torch.tensor([[0.0], [1.0], [0.5]])
    loss = ContrastiveLoss(margin=1.0, squared_margin=True)(
        emb, torch.tensor([0, 0, 1]), _pairs([0], [1], [0], [2]))
    assert loss.item() == pytest.approx((1 + (1 - 0.25)) / 2, rel=1e-5)


def test_contrastive_far_negative_contributes_nothing():
    emb = torch.tensor([[0.0], [0.0], [5.0]])
    loss = ContrastiveLoss(margin=1.0)(emb, torch.tensor([0, 0, 1]), _pairs([0], [1], [0], [2]))
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_triplet_known_value_and_active_count():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5], [0.0, 3.0]])
    a, p, n = torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3])
    loss_fn = TripletLoss(margin=0.2)
    loss = loss_fn(emb, torch.tensor([0, 0, 1, 2]), (a, p, n))
    # triplet 1: 1 - 0.5 + 0.2 = 0.7; triplet 2: 1 - 3 + 0.2 < 0 -> 0
    assert loss.item() == pytest.approx(0.35, rel=1e-4)
    assert (loss_fn.last_active, loss_fn.last_total) == (1, 2)
    nz = TripletLoss(margin=0.2, reduction="nonzero")(emb, None, (a, p, n))
    assert nz.item() == pytest.approx(0.7, rel=1e-4)


def test_triplet_squared_and_cosine_distances():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    t = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    sq = TripletLoss(margin=0.0, distance=LpDistance(squared=True))(emb, None, t)
    assert sq.item() == pytest.approx(0.0)  # d²(a,p)=2 < d²(a,n)=4
    cos = TripletLoss(margin=1.5, distance=CosineDistance())(emb, None, t)
    assert cos.item() == pytest.approx(1 - 2 + 1.5, rel=1e-5)


def test_gradients_flow_and_are_finite_at_zero_distance():
    emb = torch.zeros(3, 4, requires_grad=True)
    loss = TripletLoss(margin=0.2)(emb, None, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    assert math.isclose(loss.item(), 0.2, rel_tol=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_decreases_under_gradient_descent(name):
    torch.manual_seed(0)
    emb = torch.randn(12, 8, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(3)
    from training.miners.in_batch import AllPairsMiner, AllTripletsMiner

    loss_fn = get_loss(name)
    miner = AllPairsMiner() if name == "contrastive" else AllTripletsMiner()
    opt = torch.optim.SGD([emb], lr=0.1)
    first = None
    for _ in range(30):
        loss = loss_fn(emb, labels, miner(emb, labels))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.8


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="contrastive"):
        get_loss("nope")
