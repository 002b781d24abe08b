import json

import numpy as np
import pytest

from imgsim.cli import main
from training.evaluation.retrieval import (
    average_precision_at_r,
    exact_neighbours,
    retrieval_metrics,
)
from training.models.embedder import Embedder


def test_map_at_r_musgrave_example():
    # "A Metric Learning Reality Check", sec. 3.2: R = 10, only the 1st and 3rd are relevant
    rel = np.zeros((1, 12), bool)
    rel[0, [0, 2, 11]] = True  # a hit beyond R does not count
    assert average_precision_at_r(rel, np.array([10]))[0] == pytest.approx((1 + 2 / 3) / 10)


def test_metrics_on_a_hand_computed_line():
    # class a at 0, 1.1, 3; class b at 2, 10, 11.5 (worked out by hand, see each query:
    # 0 -> a b a (AP 1/2); 1.1 -> b a a (1/4); 3 -> b a a (1/4); 2 -> a a a b b (0);
    # 10 -> b (1/2); 11.5 -> b (1/2))
    emb = np.array([[0.0], [1.1], [3.0], [2.0], [10.0], [11.5]], np.float32)
    labels = ["a", "a", "a", "b", "b", "b"]
    m = retrieval_metrics(emb, labels, ks=(1, 2, 4), nmi=False)
    assert m["recall@1"] == pytest.approx(3 / 6)
    assert m["precision@1"] == m["recall@1"]
    assert m["recall@2"] == pytest.approx(5 / 6)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["map@r"] == pytest.approx(2 / 6)
    assert m["r_precision"] == pytest.approx(2.5 / 6)
    assert m["n_queries"] == 6 and m["n_classes"] == 2


def test_nmi_is_one_for_separated_classes_and_low_for_noise():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8)) * 20
    labels = np.repeat(np.arange(5), 20)
    good = centres[labels] + rng.normal(size=(100, 8))
    assert retrieval_metrics(good, labels)["nmi"] == pytest.approx(1.0)
    assert retrieval_metrics(rng.normal(size=(100, 8)), labels)["nmi"] < 0.3


def test_exact_neighbours_drop_the_query_not_its_duplicate():
    emb = np.array([[0.0, 0], [0, 0], [5, 5], [9, 9]], np.float32)
    nn = exact_neighbours(emb, 2)
    assert nn[0].tolist() == [1, 2] and nn[1].tolist() == [0, 2]
    assert (nn != np.arange(4)[:, None]).all()
    with pytest.raises(ValueError, match="more than"):
        exact_neighbours(emb, 4)


def test_eval_retrieval_cli_matches_brute_force(tmp_path, digits_dir, tiny_checkpoint, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--checkpoint", str(tiny_checkpoint), "--format", "folder",
                 "--data", str(digits_dir), "--json", str(out), "--num-workers", "0"]) == 0
    assert "recall@1" in capsys.readouterr().out
    r = json.loads(out.read_text())
    paths = sorted(digits_dir.glob("*/*.png"))
    labels = np.array([p.parent.name for p in paths])
    v = Embedder.from_checkpoint(tiny_checkpoint).embed_paths(paths)
    d = ((v[:, None] - v[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    assert r["n_queries"] == len(paths) and r["n_classes"] == 10
    assert r["recall@1"] == pytest.approx((labels[order[:, 0]] == labels).mean(), abs=2e-3)
    hit4 = (labels[order[:, :4]] == labels[:, None]).any(1).mean()
    assert r["recall@4"] == pytest.approx(hit4, abs=2e-3)
    assert 0 <= r["map@r"] <= r["recall@1"] and 0 < r["nmi"] <= 1


def test_eval_retrieval_cli_errors(tmp_path, tiny_checkpoint, capsys):
    code = main(["eval", "retrieval", "--checkpoint", str(tiny_checkpoint), "--format", "cub",
                 "--data", str(tmp_path / "nope")])
    assert code == 2 and "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "retrieval", "--checkpoint", "x", "--format", "bogus", "--data", "y"])
