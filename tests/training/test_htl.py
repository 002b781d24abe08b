import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.class_tree import ClassTree
from training.losses.hierarchical_triplet import HierarchicalTripletLoss
from training.samplers.hierarchical import HierarchicalSampler


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


def test_dendrogram_of_many_classes_shows_the_top_clusters(tmp_path):
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(600, 4)).astype(np.float32), np.arange(600) % 300
    tree = ClassTree.rebuild(emb, labels, levels=3)
    tree.plot_dendrogram(tmp_path / "d.png", [f"c{i}" for i in range(300)], max_leaves=40)
    from PIL import Image

    assert Image.open(tmp_path / "d.png").size[0] < 1200  # not 300 leaves wide


def test_tree_json_and_dendrogram(tmp_path):
    emb, labels = _clustered()
    tree = ClassTree.rebuild(emb, labels, levels=3)
    path = tree.write(tmp_path, "epoch001", [f"c{i}" for i in range(6)])
    d = json.loads(path.read_text())
    assert len(d["levels"]) == 4 and d["levels"][0]["nodes"] == [[f"c{i}"] for i in range(6)]
    assert (tmp_path / "dendrogram_epoch001.png").stat().st_size > 1000


def test_neighbour_table_orders_by_join_level_then_centre_distance():
    emb, labels = _clustered()
    tree = ClassTree.rebuild(emb, labels, levels=4)
    table = tree.neighbour_table(5)
    jl = tree.join_level()
    d = np.linalg.norm(tree.centers[:, None] - tree.centers[None], axis=2)
    for c in range(6):
        row = table[c]
        assert c not in row and sorted(row) == sorted(set(range(6)) - {c})
        keys = [(jl[c, o], d[c, o]) for o in row]
        assert keys == sorted(keys)
    assert table.shape == (6, 5) and tree.neighbour_table(99).shape == (6, 5)


class _FixedEmbedder:
    """Stands in for DatasetEmbedder: returns the embeddings of the 'current model'."""

    def __init__(self, emb, labels):
        self.emb, self.labels, self.calls = emb, labels, 0
        self.indices = np.arange(len(labels))

    def __call__(self):
        self.calls += 1
        return self.emb


def test_callback_rebuilds_each_epoch_and_writes_tree(tmp_path):
    from training.engine.refresh_callbacks import HTLCallback

    emb, labels = _clustered()
    # the "model" starts out confusing pairs differently: classes 0 and 2 close together
    swapped = emb.copy()
    swapped[labels == 2] += np.array([-10.0, 0], np.float32) + 0.5
    fake = _FixedEmbedder(swapped, labels)
    tree0 = ClassTree.rebuild(emb, labels, levels=4)
    sampler = HierarchicalSampler(labels, tree0, anchor_classes=1, neighbours=1, per_class=2)
    loss = HierarchicalTripletLoss(tree0)
    cb = HTLCallback(embedder=fake, sampler=sampler, loss=loss, levels=4, out_dir=tmp_path)
    cb.on_epoch_start(SimpleNamespace(epoch=0, step=0))
    assert fake.calls == 1 and cb.count == 1 and cb.seconds > 0
    # the rebuilt tree (from the model's embeddings) now pairs class 0 with class 2
    assert sampler.tree is loss.tree is cb.tree
    assert list(sampler._neigh[0]) == [2]
    assert (tmp_path / "tree_epoch001.json").is_file()
    cb.wait()  # the dendrogram is drawn in the background
    assert (tmp_path / "dendrogram_epoch001.png").is_file()
    for step in range(1, 10):
        cb.on_step_end(SimpleNamespace(epoch=0, step=step))
    cb.on_epoch_start(SimpleNamespace(epoch=1, step=9))
    assert fake.calls == 2 and (tmp_path / "tree_epoch002.json").is_file()


def test_callback_every_n_steps():
    from training.engine.refresh_callbacks import HTLCallback

    emb, labels = _clustered()
    fake = _FixedEmbedder(emb, labels)
    tree = ClassTree.rebuild(emb, labels, levels=2)
    cb = HTLCallback(embedder=fake, sampler=HierarchicalSampler(labels, tree),
                     loss=HierarchicalTripletLoss(tree), levels=2, every_steps=4)
    cb.on_epoch_start(SimpleNamespace(epoch=0, step=0))  # the first rebuild: before any step
    for step in range(1, 13):
        cb.on_step_end(SimpleNamespace(epoch=0, step=step))
    cb.on_epoch_start(SimpleNamespace(epoch=1, step=12))  # not epoch-wise: no rebuild here
    assert fake.calls == 1 + 3


def test_htl_training_step_pulls_tree_neighbours_apart():
    """A few gradient steps of HTL on free embeddings separate the hard (sibling) classes."""
    emb, labels = _clustered()
    emb, labels = emb[::4] / 10, labels[::4]  # 5 points per class
    tree = ClassTree.rebuild(emb, labels, levels=4)
    x = torch.nn.Parameter(torch.from_numpy(emb.copy()))
    loss_fn = HierarchicalTripletLoss(tree, beta=0.2)
    y = torch.as_tensor(labels)
    opt = torch.optim.SGD([x], lr=0.05)
    centre_gap = lambda: (x[y == 0].mean(0) - x[y == 1].mean(0)).norm().item()  # noqa: E731
    before, first = centre_gap(), None
    for _ in range(15):
        loss = loss_fn(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first and centre_gap() > before


def test_without_a_tree_sampler_draws_random_neighbours_and_loss_is_plain_triplet(caplog):
    _, labels = _clustered()
    s = HierarchicalSampler(labels, None, anchor_classes=1, neighbours=2, per_class=2,
                            num_batches=30, seed=0)
    pairs = {tuple(sorted(set(labels[b].tolist()))) for b in s}
    assert all(len(p) == 3 for p in pairs) and len(pairs) > 5  # not tied to any tree
    from training.losses.triplet import TripletLoss
    from training.miners.in_batch import all_triplets

    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.arange(4).repeat(2)
    plain = TripletLoss(margin=0.3, reduction="nonzero")(x, y, all_triplets(y))
    assert HierarchicalTripletLoss(beta=0.3)(x, y).item() == pytest.approx(plain.item(), rel=1e-5)
    assert "no class tree" in caplog.text


def test_callback_builds_its_embedder_from_the_training_state(tmp_path, digits_dir):
    """on_train_start: eval-transform embeddings of state.dataset's samples by state.model;
    trees land in <run>/htl with the class names."""
    from training.data.folders import LabelledImages, list_image_folder
    from training.data.transforms import train_transform
    from training.engine.refresh_callbacks import HTLCallback
    from training.models.backbones import build_model
    from training.models.spec import ModelSpec

    samples = [s for s in list_image_folder(digits_dir) if s.label in "0123"][::8]
    spec = ModelSpec(arch="smallcnn", embedding_dim=4, input_size=16, arch_kwargs={"width": 4})
    ds = LabelledImages(samples, train_transform(spec))
    state = SimpleNamespace(model=build_model(spec), spec=spec, dataset=ds, out=tmp_path,
                            config={"seed": 0}, epoch=0, step=0)
    sampler = HierarchicalSampler(ds.targets, anchor_classes=1, neighbours=1, per_class=2)
    cb = HTLCallback(sampler=sampler, loss=HierarchicalTripletLoss(), levels=2, max_per_class=3)
    cb.on_train_start(state)
    cb.on_epoch_start(state)
    assert cb.tree is not None and cb.tree.n_classes == 4
    assert len(cb.embedder.labels) == 12  # 3 per class
    tree = json.loads((tmp_path / "htl" / "tree_epoch001.json").read_text())
    assert tree["classes"] == ["0", "1", "2", "3"]


def test_refresh_parts_are_built_by_name():
    from training.engine.distributed import ShardedBatchSampler
    from training.engine.refresh_callbacks import (
        HardNegativeCallback,
        HTLCallback,
        build_refresh_sampler,
        refresh_callbacks,
    )
    from training.losses.triplet import TripletLoss
    from training.samplers.hard_negatives import HardNegativeSampler

    _, labels = _clustered()
    hs = build_refresh_sampler("hierarchical", labels, p=4, k=3, num_batches=5, seed=0,
                               neighbours=1)
    assert isinstance(hs, HierarchicalSampler) and hs.anchor_classes == 2
    # at most P x K: 2 anchors + 1 neighbour each (a class drawn twice enters once), K = 3
    assert all(len(b) in (6, 9, 12) for b in hs) and any(len(b) == 12 for b in hs)
    hn = build_refresh_sampler("hard-negatives", labels, p=4, k=3, num_batches=5, seed=0)
    assert isinstance(hn, HardNegativeSampler)
    with pytest.raises(ValueError, match="hierarchical"):
        build_refresh_sampler("pk", labels, p=4, k=3, num_batches=5, seed=0)
    # an HTL loss needs a tree even with a plain sampler; a tree sampler even with a plain loss
    loss = HierarchicalTripletLoss()
    (cb,) = refresh_callbacks(loss_fn=loss, batch_sampler=None, every_steps=7)
    assert isinstance(cb, HTLCallback) and cb.loss is loss and cb.sampler is None
    assert cb.every_steps == 7
    (cb,) = refresh_callbacks(loss_fn=TripletLoss(),
                              batch_sampler=ShardedBatchSampler(hs, rank=0, world_size=2))
    assert cb.sampler is hs and cb.loss is None
    (cb,) = refresh_callbacks(loss_fn=TripletLoss(), batch_sampler=hn, mining_k=4)
    assert isinstance(cb, HardNegativeCallback) and cb.k == 4
    assert refresh_callbacks(loss_fn=TripletLoss(), batch_sampler=None) == []


@pytest.mark.slow
def test_imgsim_train_loss_htl_sampler_hierarchical_writes_tree_per_epoch(tmp_path, digits_dir):
    from imgsim.cli import main
    from training.checkpoint import load_checkpoint

    code = main(["train", "--data", str(digits_dir), "--out", str(tmp_path), "--loss", "htl",
                 "--sampler", "hierarchical", "--neighbours", "1", "--tree-levels", "3",
                 "--refresh-max-per-class", "4", "--arch", "smallcnn", "--input-size", "16",
                 "--embedding-dim", "8", "--p", "4", "--k", "3", "--steps-per-epoch", "2",
                 "--epochs", "2", "--num-workers", "0", "--val-fraction", "0",
                 "--no-tensorboard"])
    assert code == 0
    for epoch in (1, 2):  # rebuilt every epoch from the model's own embeddings
        tree = json.loads((tmp_path / "htl" / f"tree_epoch{epoch:03d}.json").read_text())
        assert len(tree["levels"]) == 4 and sorted(tree["classes"]) == [str(d) for d in range(10)]
        assert (tmp_path / "htl" / f"dendrogram_epoch{epoch:03d}.png").stat().st_size > 1000
    ckpt = load_checkpoint(tmp_path / "model.pt")
    hist = ckpt.metrics["history"]
    assert [h["trees"] for h in hist] == [1, 1] and all(h["tree_seconds"] > 0 for h in hist)
    assert ckpt.config["loss"] == "htl" and ckpt.config["sampler"] == "hierarchical"
