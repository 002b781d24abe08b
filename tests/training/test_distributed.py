import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from training.engine.distributed import (
    DistInfo,
    ShardedBatchSampler,
    embed_dataset,
    init_from_env,
    shard,
)
from training.samplers.pk import PKSampler


def _stream(n_batches=7, seed=3):
    labels = np.repeat(np.arange(8), 4)
    return labels, PKSampler(labels, p=4, k=2, num_batches=n_batches, seed=seed)


def test_shards_are_disjoint_equal_sized_and_cover_the_stream():
    labels, _ = _stream()
    full = list(_stream()[1])
    shards = [list(ShardedBatchSampler(_stream()[1], rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]  # 7 batches, 3 ranks: the 7th is dropped
    assert shards[0] == [full[0], full[3]] and shards[1] == [full[1], full[4]]
    taken = [tuple(b) for s in shards for b in s]
    assert sorted(taken) == sorted(tuple(b) for b in full[:6])
    # set_epoch reaches the wrapped sampler: a new epoch is a new stream
    s = ShardedBatchSampler(_stream()[1], rank=0, world_size=3)
    s.set_epoch(1)
    assert list(s) != shards[0]
    with pytest.raises(ValueError, match="rank 3"):
        ShardedBatchSampler(_stream()[1], rank=3, world_size=3)


def test_single_process_defaults():
    info = init_from_env(env={})
    assert info == DistInfo() and not info.enabled and info.is_main
    _, sampler = _stream()
    assert shard(sampler, info) is sampler
    with pytest.raises(ValueError, match="torchrun"):
        init_from_env(env={"WORLD_SIZE": "2"})


def test_embed_dataset_keeps_order_and_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    x = torch.randn(10, 3)
    ds = TensorDataset(x, torch.zeros(10))
    model.train()
    out = embed_dataset(model, ds, indices=[7, 2, 5], batch_size=2)
    assert model.training  # restored
    model.eval()
    assert np.allclose(out, model(x[[7, 2, 5]]).detach().numpy(), atol=1e-6)


def build_model_state_keys():
    from training.models.backbones import build_model
    from training.models.spec import ModelSpec

    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=16, arch_kwargs={"width": 4})
    return build_model(spec).state_dict().keys()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    from training.checkpoint import Checkpoint
    from training.engine.distributed import cleanup, on_main, save_on_main, unwrap, wrap_model
    from training.losses.triplet import TripletLoss
    from training.miners.in_batch import BatchHardMiner
    from training.models.backbones import build_model
    from training.models.spec import ModelSpec

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = init_from_env("gloo")
    spec = ModelSpec(arch="smallcnn", embedding_dim=8, input_size=16, arch_kwargs={"width": 4})
    torch.manual_seed(100 + rank)  # different initial weights: DDP must start from rank 0's
    net = build_model(spec)
    own_init = net.head.weight.detach().clone()
    model = wrap_model(net, info)
    start = unwrap(model).head.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    labels, inner = _stream(n_batches=4)
    images = torch.randn(len(labels), 3, 16, 16, generator=g)
    sampler = shard(inner, info)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn, miner = TripletLoss(margin=0.5), BatchHardMiner()
    batches = []
    for batch in sampler:
        batches.append(batch)
        x, y = images[batch], torch.as_tensor(labels[batch])
        emb = model(x)
        loss = loss_fn(emb, y, miner(emb, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ds = TensorDataset(images, torch.as_tensor(labels))
    emb = embed_dataset(model, ds, info=info, batch_size=5)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # no "module." prefix
    model.eval()
    assert torch.equal(model(images[:3]), unwrap(model)(images[:3]))  # no collective: rank-local
    if rank == 0:
        model(images[:2])  # rank 0 alone evaluates: must not wait for rank 1
    model.train()
    torch.save({"state": state, "batches": batches, "emb": torch.from_numpy(emb),
                "own_init": own_init, "start": start},
               os.path.join(tmp, f"rank{rank}.pt"))
    save_on_main(info, os.path.join(tmp, f"ckpt_from_rank{rank}.pt"), Checkpoint(spec, state))
    on_main(info, lambda: open(os.path.join(tmp, "log.txt"), "a").write(f"rank{rank}\n"))
    cleanup(info)


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # identical weights (and BN buffers) on both ranks after the steps
    assert set(r0["state"]) == set(build_model_state_keys())
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # the ranks began from different draws; DDP started both from rank 0's, and training moved it
    assert not torch.equal(r0["own_init"], r1["own_init"])
    assert torch.equal(r1["start"], r0["own_init"])
    assert not torch.allclose(r0["state"]["head.weight"], r0["start"])
    # the two ranks drew disjoint halves of the same batch stream
    _, inner = _stream(n_batches=4)
    full = list(inner)
    assert r0["batches"] == full[0::2] and r1["batches"] == full[1::2]
    # the sharded embedding pass gives both ranks the whole, identical matrix
    assert r0["emb"].shape == (32, 8) and torch.equal(r0["emb"], r1["emb"])
    # only rank 0 wrote
    assert (tmp_path / "ckpt_from_rank0.pt").is_file()
    assert not (tmp_path / "ckpt_from_rank1.pt").exists()
    assert (tmp_path / "log.txt").read_text() == "rank0\n"


def _train_worker(rank: int, world: int, port: int, data: str, tmp: str) -> None:
    import training.class_tree
    import training.engine.callbacks
    import training.engine.train
    from training.engine.distributed import ShardedBatchSampler
    from training.engine.train import TrainConfig, train

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    writes = []  # every checkpoint / tree this rank writes

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(*a, **kw):
            writes.append(name)
            return real(*a, **kw)
        setattr(module, name, wrapper)

    spy(training.engine.callbacks, "save_checkpoint")
    spy(training.engine.train, "save_checkpoint")
    spy(training.class_tree.ClassTree, "write")

    class Record:
        def on_train_end(self, state):
            sampler = state.loader.batch_sampler
            assert isinstance(sampler, ShardedBatchSampler)
            tree = sampler.inner.tree
            torch.save({"state": {k: v.clone() for k, v in state.model.state_dict().items()},
                        "batches": list(sampler), "out": str(state.out),
                        "thresholds": torch.from_numpy(tree.thresholds),
                        "node": torch.from_numpy(tree.node)}, os.path.join(tmp, f"rank{rank}.pt"))

    cfg = TrainConfig(data=data, out=os.path.join(tmp, "run"), loss="htl", sampler="hierarchical",
                      neighbours=1, tree_levels=3, arch="smallcnn", arch_kwargs={"width": 4},
                      input_size=16, embedding_dim=8, p=4, k=2, steps_per_epoch=4, epochs=1,
                      num_workers=0, val_fraction=0.0, tensorboard=False, calibration_pairs=50)
    path = train(cfg, callbacks=[Record()])
    with open(os.path.join(tmp, f"writes{rank}.txt"), "w") as f:
        f.write(" ".join(writes) + f"\n{path}")


@pytest.mark.slow
def test_train_under_two_processes_is_one_htl_run(tmp_path, digits_dir):
    """What `torchrun --nproc_per_node 2 -m imgsim.cli train --loss htl --sampler
    hierarchical ...` does, on gloo: one model, one tree, disjoint batches, rank 0 writes."""
    mp.spawn(_train_worker, args=(2, _free_port(), str(digits_dir), str(tmp_path)), nprocs=2,
             join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # the tree was built from all-gathered embeddings: the same on both ranks
    assert torch.equal(r0["thresholds"], r1["thresholds"]) and torch.equal(r0["node"], r1["node"])
    assert len(r0["batches"]) == len(r1["batches"]) == 2 and r0["batches"] != r1["batches"]
    w0, w1 = ((tmp_path / f"writes{r}.txt").read_text().splitlines() for r in (0, 1))
    assert "write" in w0[0] and w0[0].count("save_checkpoint") == 2  # last.pt, model.pt
    assert w1[0] == "" and r1["out"] == "None"
    assert w0[1] == w1[1] == str(tmp_path / "run" / "model.pt")
    assert (tmp_path / "run" / "htl" / "tree_epoch001.json").is_file()
