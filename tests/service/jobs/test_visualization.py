"""Visualization: properties, not pixels (guided backprop masks, ascent increases its target,
occlusion finds the differing region, t-SNE keeps clusters apart, clustering scores)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from service.jobs.report import HtmlReport
from training.clustering import CLUSTERERS, cluster_embeddings, nmi, purity
from training.visualization.attribution import METHODS, ModedReLU, reconstruct, relu_backward
from training.visualization.embeddings import knn_label_agreement, tsne_2d
from training.visualization.features import feature_maps, first_layer_filters
from training.visualization.models import layer_output
from training.visualization.occlusion import (
    class_score,
    occlusion_map,
    verification_occlusion,
)
from training.visualization.optimize import (
    AscentConfig,
    DreamConfig,
    StyleConfig,
    activation_energy,
    channel_objective,
    deep_dream,
    gradient_ascent,
    gram_matrix,
    output_objective,
    style_transfer,
)


def _cnn(seed: int = 0, in_ch: int = 1, out: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, out)).eval()


def _relu_grads(mode: str, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    ModedReLU(mode)(x).backward(g)
    return x.grad


def test_guided_backprop_passes_only_active_units_with_positive_gradient():
    torch.manual_seed(0)
    x, g = torch.randn(1000), torch.randn(1000)
    guided = _relu_grads("guided", x, g)
    passes = (x > 0) & (g > 0)
    assert torch.equal(guided[passes], g[passes])
    assert torch.all(guided[~passes] == 0)
    # deconvnet rectifies the signal regardless of the forward activation
    assert torch.equal(_relu_grads("deconvnet", x, g), g.clamp(min=0))
    # the plain gradient keeps negative signal where the unit was active
    assert torch.equal(_relu_grads("gradient", x, g), g * (x > 0))


def test_relu_backward_swaps_modules_and_restores_them():
    model = _cnn()
    before = [type(m) for m in model]
    with relu_backward(model, "guided"):
        assert sum(isinstance(m, ModedReLU) for m in model) == 3
        assert not any(isinstance(m, nn.ReLU) for m in model)
    assert [type(m) for m in model] == before


@pytest.mark.parametrize("method", METHODS)
def test_reconstruction_of_a_first_layer_unit_is_its_filter_in_place(method):
    model = _cnn()
    x = torch.randn(1, 1, 32, 32)
    r = reconstruct(model, x, layer="1", channel=-1, method=method)  # ReLU of the first conv
    c, y, xx = r.unit
    with torch.no_grad():
        act = layer_output(model, "1", x)[0]
    assert r.activation == pytest.approx(float(act[c].max())) and act[c, y, xx] == act[c].max()
    # one active unit, upstream signal 1: every method returns the transposed filter there
    onehot = torch.zeros(1, 8, 32, 32)
    onehot[0, c, y, xx] = 1
    expected = F.conv_transpose2d(onehot, model[0].weight.detach(), padding=1)[0]
    assert torch.allclose(r.image_grad, expected, atol=1e-6)
    assert r.image_grad.abs().sum() > 0


def test_guided_reconstruction_differs_from_gradient_deeper_down():
    model = _cnn()
    x = torch.randn(1, 1, 32, 32)
    g = reconstruct(model, x, layer="7", channel=3, method="gradient").image_grad
    gb = reconstruct(model, x, layer="7", channel=3, method="guided").image_grad
    assert g.shape == gb.shape == (1, 32, 32) and not torch.allclose(g, gb)


def test_gradient_ascent_increases_the_target():
    model = _cnn()
    init = torch.randn(1, 1, 32, 32) * 0.1
    cfg = AscentConfig(steps=30, lr=0.05)
    for obj in [channel_objective(model, "4", 5), output_objective(model, 2)]:
        x, hist = gradient_ascent(obj, init, cfg)
        with torch.no_grad():
            assert float(obj(x)) > float(obj(init)) + 1e-3
        assert hist[-1] > hist[0]
        assert x.abs().max() <= cfg.clamp


def _total_variation(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
                 + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def test_ascent_regularisers_smooth_and_shrink_the_image():
    """Blur removes the high frequencies the bare gradient adds; decay keeps the image small."""
    model = _cnn()
    obj = channel_objective(model, "4", 5)
    init = torch.zeros(1, 1, 32, 32)
    bare = AscentConfig(steps=20, lr=0.05, jitter=2, blur_every=0, decay=0.0, clamp=100.0)
    blurred, _ = gradient_ascent(obj, init, replace(bare, blur_every=1, blur_sigma=1.0))
    decayed, _ = gradient_ascent(obj, init, replace(bare, decay=0.1))
    plain, _ = gradient_ascent(obj, init, bare)
    assert _total_variation(blurred) < 0.7 * _total_variation(plain)
    assert float(decayed.norm()) < 0.7 * float(plain.norm())


def test_deep_dream_amplifies_the_layer():
    model = _cnn()
    image = torch.randn(1, 1, 40, 40) * 0.5
    dream = deep_dream(model, image, "4", DreamConfig(octaves=2, steps_per_octave=5))
    assert dream.shape == image.shape
    with torch.no_grad():
        assert activation_energy(model, "4", dream) > activation_energy(model, "4", image)


def test_gram_matrix_and_style_transfer_moves_towards_the_style():
    f = torch.arange(8.0).reshape(1, 2, 2, 2)
    g = gram_matrix(f)
    flat = f.reshape(2, 4)
    assert torch.allclose(g[0], flat @ flat.T / 8)
    model = _cnn()
    content, style = torch.randn(1, 1, 24, 24) * 0.3, torch.randn(1, 1, 24, 24)
    r = style_transfer(model, content, style, content_layer="4", style_layers=["1", "4"],
                       cfg=StyleConfig(steps=25, lr=0.05))
    assert r.style_loss[-1] < 0.5 * r.style_loss[0]
    assert r.content_loss[0] == pytest.approx(0, abs=1e-6)  # it starts from the content image


def test_class_occlusion_finds_the_evidence():
    # a "classifier" whose class 1 logit is the mean brightness of one square
    class Square(nn.Module):
        def forward(self, x):
            s = x[:, 0, 8:16, 20:28].mean((1, 2)) * 10
            return torch.stack([-s, s], 1)

    x = torch.ones(1, 1, 32, 32)
    occ = occlusion_map(class_score(Square(), 1), x, patch=8, stride=4)
    peak = np.unravel_index(np.argmax(occ.heatmap), occ.heatmap.shape)
    assert 8 <= peak[0] < 16 and 20 <= peak[1] < 28
    assert occ.heatmap[0:4, 0:4].max() == pytest.approx(0, abs=1e-6)


def _pair(seed: int = 0):
    """Two images with the same textured background that differ only in one 8x8 region R.
    In b, R holds the fill value (0): occluding R in a turns a into b exactly."""
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(1, 1, 32, 32, generator=g)
    a, b = background.clone(), background.clone()
    a[..., 12:20, 16:24] = 2.0 * torch.randn(1, 1, 8, 8, generator=g).abs() + 1
    b[..., 12:20, 16:24] = 0.0
    return a, b


def _spatial_embedder() -> nn.Module:
    """A CNN whose embedding keeps the layout (no global pooling), like a face model's."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten()).eval()


@pytest.mark.parametrize("mode", ["a", "both"])
def test_occluding_the_difference_moves_similarity_more_than_the_background(mode):
    model = _spatial_embedder()
    a, b = _pair()
    v = verification_occlusion(model, a, b, mode=mode, patch=8, stride=4)
    assert v.similarity < 0.95
    inside = np.abs(v.heatmap_a[12:20, 16:24]).max()
    outside = np.zeros((32, 32), bool)
    outside[4:28, 8:32] = True  # everything at least a patch away from R
    outside = ~outside
    assert inside > np.abs(v.heatmap_a[outside]).max()
    assert v.heatmap_a[12:20, 16:24].mean() < 0  # occluding the difference raises similarity


def test_feature_maps_and_first_filters():
    model = _cnn()
    x = torch.randn(1, 1, 16, 16)
    maps = feature_maps(model, x, ["0", "4"])
    with torch.no_grad():
        conv1 = model[0](x)
    assert torch.allclose(maps["0"], conv1[0])  # the pre-ReLU output, not the in-place result
    assert maps["4"].shape == (16, 8, 8) and bool((maps["4"] >= 0).all())
    name, w = first_layer_filters(model)
    assert name == "0" and torch.equal(w, model[0].weight)
    with pytest.raises(ValueError, match="no layer 'nope'.*layers with activations include: 0, 1"):
        feature_maps(model, x, ["nope"])


def _blobs(n_per: int = 30, k: int = 4, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, dim))
    x = np.concatenate([c + rng.normal(0, 0.5, (n_per, dim)) for c in centres]).astype(np.float32)
    labels = [str(i) for i in range(k) for _ in range(n_per)]
    return x, labels


def test_tsne_keeps_well_separated_clusters_apart():
    x, labels = _blobs()
    pts = tsne_2d(x, perplexity=10, seed=0, max_iter=300)
    assert pts.shape == (120, 2)
    assert knn_label_agreement(pts, labels, k=5) > 0.97
    lab = np.array(labels)
    centroids = np.stack([pts[lab == c].mean(0) for c in sorted(set(labels))])
    spread = max(np.linalg.norm(pts[lab == c] - centroids[i], axis=1).max()
                 for i, c in enumerate(sorted(set(labels))))
    gaps = [np.linalg.norm(centroids[i] - centroids[j]) for i in range(4) for j in range(i)]
    assert min(gaps) > spread  # no cluster reaches into another's centre


def test_purity_and_nmi_by_hand():
    true = ["a", "a", "a", "b", "b", "c"]
    pred = np.array([0, 0, 1, 1, 1, -1])
    # cluster 0: a,a -> 2; cluster 1: a,b,b -> 2; noise point counts alone -> 1
    assert purity(true, pred) == pytest.approx(5 / 6)
    assert nmi(true, np.array([5, 5, 5, 7, 7, 9])) == pytest.approx(1.0)


@pytest.mark.parametrize("method", sorted(CLUSTERERS))
def test_every_clusterer_recovers_separated_groups(method):
    x, labels = _blobs()
    kw = {"eps": 0.3, "min_samples": 3} if method == "dbscan" else {"n_clusters": 4}
    pred = cluster_embeddings(x, method, **kw)
    assert nmi(labels, pred) == pytest.approx(1.0) and purity(labels, pred) == 1.0
    with pytest.raises(ValueError, match="valid: agglomerative, dbscan, kmeans"):
        cluster_embeddings(x, "spectral")


def test_html_report_escapes_and_links_images(tmp_path):
    r = HtmlReport("job <1>")
    (tmp_path / "sub").mkdir()
    r.image(tmp_path / "sub" / "a b.png", "caption & <b>", base=tmp_path)
    r.table([{"x": 0.123456, "y": "<td>"}])
    html = r.render()
    assert 'src="sub/a b.png"' in html and "caption &amp; &lt;b&gt;" in html
    assert "job &lt;1&gt;" in html and "&lt;td&gt;" in html and "0.1235" in html
