import json

import numpy as np
import pytest
import torch

from training.htl import ClassTree, HierarchicalSampler, HierarchicalTripletLoss


def _clustered(seed=0):
    """6 classes in 3 well-separated pairs: (0,1) near each other, (2,3), (4,5)."""
    rng = np.random.default_rng(seed)
    pair_centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    emb, labels = [], []
    for c in range(6):
        centre = pair_centres[c // 2] + (c % 2) * np.array([1.0, 0])
        emb.append(centre + rng.normal(0, 0.1, (20, 2)))
        labels += [c] * 20
    return np.concatenate(emb).astype(np.float32), np.array(labels)


def test_tree_merges_nearest_classes_first():
    emb, labels = _clustered()
    tree = ClassTree.rebuild(emb, labels, levels=4)
    jl = tree.join_level()
    assert jl[0, 1] < jl[0, 2] and jl[2, 3] < jl[2, 4] and jl[4, 5] < jl[0, 4]
    assert (np.diag(jl) == 0).all() and (jl == jl.T).all()
    assert len(set(tree.node[-1])) == 1  # everything joins at the top
    # thresholds span mean intra-class distance .. largest centre distance
    assert tree.thresholds[0] == pytest.approx(tree.intra.mean(), rel=1e-5)
    assert tree.thresholds[-1] == pytest.approx(np.linalg.norm([10, -11]), rel=0.05)
    assert list(tree.nearest_classes(0, 1)) == [1]


def test_margin_is_beta_plus_merge_distance_minus_intra():
    emb, labels = _clustered()
    tree = ClassTree.rebuild(emb, labels, levels=4)
    loss = HierarchicalTripletLoss(tree, beta=0.1)
    ya, yn = torch.tensor([0, 0]), torch.tensor([1, 4])
    m = loss.margins(ya, yn)
    dh = tree.merge_distance()
    assert m[0].item() == pytest.approx(0.1 + dh[0, 1] - tree.intra[0], rel=1e-5)
    assert m[1] > m[0]  # a far-away class in the tree asks for a larger margin


def test_loss_value_on_a_known_triplet():
    emb, labels = _clustered()
    tree = ClassTree.rebuild(emb, labels, levels=4)
    loss = HierarchicalTripletLoss(tree, beta=0.2, reduction="mean")
    x = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    t = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    alpha = 0.2 + tree.merge_distance()[0, 1] - tree.intra[0]
    assert loss(x, y, t).item() == pytest.approx(max(0.0, 0.5 - 1.0 + alpha), rel=1e-4)


def test_sampler_batches_hold_anchor_and_tree_neighbours():
    emb, labels = _clustered()
    tree = ClassTree.rebuild(emb, labels, levels=4)
    s = HierarchicalSampler(labels, tree, anchor_classes=1, neighbours=1, per_class=3,
                            num_batches=20, seed=1)
    for batch in s:
        classes = sorted(set(labels[batch]))
        assert len(batch) == 6 and len(classes) == 2
        assert classes[0] // 2 == classes[1] // 2  # the anchor's sibling in the tree


def test_tree_json_and_dendrogram(tmp_path):
    emb, labels = _clustered()
    tree = ClassTree.rebuild(emb, labels, levels=3)
    path = tree.write(tmp_path, "epoch001", [f"c{i}" for i in range(6)])
    d = json.loads(path.read_text())
    assert len(d["levels"]) == 4 and d["levels"][0]["nodes"] == [[f"c{i}"] for i in range(6)]
    assert (tmp_path / "dendrogram_epoch001.png").stat().st_size > 1000
