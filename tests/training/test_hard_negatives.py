from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from training.engine.refresh import DatasetEmbedder
from training.engine.refresh_callbacks import HardNegativeCallback
from training.miners.hard_negatives import nearest_other_class
from training.samplers.hard_negatives import HardNegativeSampler


def _line():
    """Class c sits at (10c, 0), except class 3, planted at (1, 5): next to class 0."""
    pos = {0: 0.0, 1: 10.0, 2: 20.0, 3: 1.0, 4: 40.0, 5: 50.0}
    emb, labels = [], []
    for c, x in pos.items():
        for j in range(4):
            emb.append([x + 0.01 * j, 5.0 if c == 3 else 0.0])
            labels.append(c)
    return np.array(emb, np.float32), np.array(labels)


def _brute(emb, labels, k):
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    d[labels[:, None] == labels[None]] = np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :k], np.sort(d, axis=1)[:, :k]


def test_nearest_other_class_matches_brute_force():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 5)).astype(np.float32)
    labels = rng.integers(0, 6, 60)
    hn = nearest_other_class(emb, labels, k=4, chunk=17)  # chunks must not change the answer
    nb, dist = _brute(emb, labels, 4)
    assert np.allclose(hn.distances, dist, atol=1e-4)
    assert (labels[hn.neighbours] != labels[:, None]).all()
    assert (hn.neighbours == nb).mean() > 0.95  # ties aside, the same rows
    # fraction of rows whose nearest other row is of another class = 1 - Recall@1
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert hn.nn_is_other_class == pytest.approx(np.mean(labels[d.argmin(1)] != labels))


def test_pads_when_too_few_other_class_rows():
    emb = np.array([[0, 0], [1, 0], [2, 0]], np.float32)
    hn = nearest_other_class(emb, [0, 0, 1], k=3)
    assert hn.neighbours[0].tolist() == [2, -1, -1] and np.isinf(hn.distances[0, 1:]).all()
    assert hn.neighbours[2].tolist() == [1, 0, -1]
    with pytest.raises(ValueError, match="len\\(labels\\)"):
        nearest_other_class(emb, [0, 1], k=1)


def test_batches_pair_each_anchor_with_its_mined_negative_class():
    emb, labels = _line()
    hn = nearest_other_class(emb, labels, k=3)
    s = HardNegativeSampler(labels, anchors=1, negatives=1, per_class=3, num_batches=24, seed=0)
    s.set_neighbours(np.arange(len(labels)), hn.neighbours)
    pairs = set()
    for batch in s:
        classes = sorted(set(labels[batch].tolist()))
        assert len(batch) == 6 and len(classes) == 2
        assert all((labels[batch] == c).sum() == 3 for c in classes)
        pairs.add(tuple(classes))
    # the planted confusion 0 <-> 3 is what anchors of classes 0 and 3 get
    assert (0, 3) in pairs and all(p in {(0, 3), (0, 1), (1, 3), (1, 2), (2, 4), (4, 5), (2, 3)}
                                   for p in pairs)


def test_random_negative_classes_before_mining_and_new_stream_per_epoch():
    _, labels = _line()
    s = HardNegativeSampler(labels, anchors=2, negatives=2, per_class=2, num_batches=5, seed=0)
    first = list(s)
    assert all(len(set(labels[b].tolist())) >= 3 for b in first)
    s.set_epoch(1)
    assert list(s) != first
    with pytest.raises(ValueError, match="two classes"):
        HardNegativeSampler([0, 0, 0])


def test_callback_mines_with_the_current_model():
    emb, labels = _line()
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():  # a model that ignores the second coordinate
        model.weight.copy_(torch.tensor([[1.0, 0], [0, 0]]))
    ds = TensorDataset(torch.from_numpy(emb), torch.from_numpy(labels))
    embedder = DatasetEmbedder(model, ds, labels=labels, max_per_class=2, cache=True)
    s = HardNegativeSampler(labels, anchors=1, negatives=1, per_class=2, num_batches=4)
    cb = HardNegativeCallback(embedder=embedder, sampler=s, k=2)
    cb.on_epoch_start(SimpleNamespace(epoch=0, step=0))
    assert cb.count == 1 and len(embedder.indices) == 12
    rows = embedder.indices[labels[embedder.indices] == 0]
    # dataset indices, not embedded-row indices: class 0's hardest negatives are class 3 images
    assert all(labels[s.hard[int(r)][0]] == 3 for r in rows)
    # a model that stretches the second coordinate moves class 3 away: class 1 is now hardest
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0], [0, 100.0]]))
    cb.on_epoch_start(SimpleNamespace(epoch=1, step=4))
    assert all(labels[s.hard[int(r)][0]] == 1 for r in rows)
    assert len(cb.history) == 2


@pytest.mark.slow
def test_train_with_hard_negative_batches(tmp_path, digits_dir):
    from training.checkpoint import load_checkpoint
    from training.engine.train import TrainConfig, train

    cfg = TrainConfig(data=str(digits_dir), out=str(tmp_path), sampler="hard-negatives",
                      neighbours=1, mining_k=3, refresh_every=3, refresh_max_per_class=5,
                      arch="smallcnn", arch_kwargs={"width": 4}, input_size=16, embedding_dim=8,
                      p=4, k=2, steps_per_epoch=2, epochs=2, num_workers=0, val_fraction=0.0,
                      tensorboard=False, calibration_pairs=100)
    hist = load_checkpoint(train(cfg)).metrics["history"]
    # re-mined before the first step and after step 3 (every 3 steps over 4 steps)
    assert sum(h["minings"] for h in hist) == 2
    assert all(0 <= h["mined_nn_is_other_class"] <= 1 for h in hist)
