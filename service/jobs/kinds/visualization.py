"""Visualization job kinds: t-SNE, filters and feature maps, DeconvNet / guided backprop,
gradient ascent, Deep Dream, style transfer, occlusion (class score and verification),
retrieval galleries, and the digit classifier used by the classifier demos."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.jobs.context import JobContext
from service.jobs.params import JobKind, param


def _checkpoint(checkpoint: str, ctx: JobContext) -> str:
    ck = checkpoint or ctx.defaults.checkpoint
    if not ck:
        raise ValueError("this job needs a checkpoint (param 'checkpoint', or the worker's "
                         "--checkpoint default)")
    return ck


def embedding_source(ctx: JobContext, *, checkpoint: str, images: str, index_root: str,
                     catalog_url: str, max_images: int, seed: int, collection: str = ""):
    """Embeddings of an image folder (embedded with the checkpoint) or of an index version
    (of ``collection``: the index root among the worker's whose manifest names it)."""
    from training.visualization.embeddings import from_folder

    if images:
        ctx.progress(0.05, f"embedding {images}")
        return from_folder(_checkpoint(checkpoint, ctx), images, max_images=max_images,
                           seed=seed)
    url = catalog_url or ctx.defaults.catalog_url
    root = index_root or (collection_root(collection, ctx) if collection
                          else ctx.defaults.index_root)
    if not root or not url:
        raise ValueError("give 'images' (a folder) or an index ('index_root' and 'catalog_url')")
    return from_index(root, url, collection=collection).sample(max_images, seed=seed)


def collection_root(collection: str, ctx: JobContext) -> str:
    """The worker's index root (its default or one of its others) serving ``collection``."""
    from indexer.versions import read_manifest

    roots = [r for r in (ctx.defaults.index_root, *ctx.defaults.index_roots) if r]
    for root in roots:
        try:
            if read_manifest(root).collection == collection:
                return root
        except (OSError, ValueError):
            continue
    raise ValueError(f"no index of collection {collection!r} among the worker's index roots "
                     f"({', '.join(roots) or 'none'}); give 'index_root'")


# -- t-SNE ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TsneParams:
    checkpoint: str = param("", "embedding model for 'images' (default: the worker's --checkpoint)")
    images: str = param("", "image folder <label>/<file> to embed; empty: the index below")
    index_root: str = param("", "index whose stored vectors are mapped (default: the worker's)")
    catalog_url: str = param(
        "", "catalogue of that index, for keys, paths and labels (default: the worker's)")
    collection: str = param(
        "", "collection mapped (default: the index's own); without 'index_root', its index is "
            "the worker's that serves it")
    perplexity: float = param(
        30.0, "t-SNE perplexity: about how many neighbours each point keeps close")
    sample: int = param(1000, "points in the map (a random sample)")
    thumbnails: int = param(40, "points drawn as image thumbnails")
    seed: int = param(0, "seed of the sample, t-SNE and the thumbnail picks")


def run_tsne(p: TsneParams, ctx: JobContext) -> None:
    from training.visualization.embeddings import (
        knn_label_agreement,
        thumbnail,
        tsne_2d,
        write_points_csv,
    )
    from training.visualization.plots import scatter_with_thumbnails

    data = embedding_source(ctx, checkpoint=p.checkpoint, images=p.images,
                            index_root=p.index_root, catalog_url=p.catalog_url,
                            max_images=p.sample, seed=p.seed, collection=p.collection)
    ctx.progress(0.3, f"t-SNE of {len(data.labels)} points")
    pts = tsne_2d(data.vectors, perplexity=p.perplexity, seed=p.seed)
    rng = np.random.default_rng(p.seed)
    picks = rng.choice(len(pts), min(p.thumbnails, len(pts)), replace=False)
    thumbs = {int(i): thumbnail(data.paths[i], 28) for i in picks}
    ctx.progress(0.8, "drawing")
    png = scatter_with_thumbnails(pts, [lab or "?" for lab in data.labels], ctx.path("tsne.png"),
                                  thumbs=thumbs, title=f"t-SNE (perplexity {p.perplexity:g}) of "
                                                       f"{len(pts)} embeddings")
    ctx.add_artifact(png, "t-SNE of the embeddings, coloured by label")
    ctx.add_artifact(write_points_csv(ctx.path("tsne.csv"), data, pts),
                     "2-D coordinates of each image (key, path, label, x, y)")
    if all(data.labels):
        ctx.report.table([{"points": len(pts),
                           "5-NN label agreement in 2-D": knn_label_agreement(pts, data.labels),
                           "5-NN label agreement in the embedding":
                               knn_label_agreement(data.vectors, data.labels)}],
                         "how well the map keeps labels together")


# -- filters and feature maps ---------------------------------------------------------------
@dataclass(frozen=True)
class FiltersParams:
    checkpoint: str = param("", "model (default: the worker's --checkpoint)")
    image: str = param("", "also draw the feature maps of this image (optional)")
    layers: tuple[str, ...] = param(
        (), "module names of the feature maps (default: the first three ReLUs)")
    max_channels: int = param(16, "feature maps drawn per layer")


def run_filters(p: FiltersParams, ctx: JobContext) -> None:
    from training.visualization.features import feature_maps, first_layer_filters
    from training.visualization.models import load_model, relu_layers
    from training.visualization.plots import feature_maps_figure, filters_figure

    m = load_model(_checkpoint(p.checkpoint, ctx))
    name, w = first_layer_filters(m.model)
    out_ch, in_ch, kh, kw = w.shape
    shown = "as RGB" if in_ch == 3 else f"the mean of {in_ch} input channels"
    ctx.add_artifact(filters_figure(w.numpy(), ctx.path("filters.png"),
                                    title=f"{name}: {out_ch} filters of {kh}x{kw}, shown {shown}, "
                                          "each scaled to its own range"),
                     f"first-layer filters ({name})")
    if p.image:
        layers = list(p.layers) or relu_layers(m.model)[:3]
        maps = feature_maps(m.model, m.tensor(p.image), layers)
        ctx.add_artifact(feature_maps_figure({k: v.numpy() for k, v in maps.items()},
                                             ctx.path("feature_maps.png"),
                                             max_channels=p.max_channels),
                         f"feature maps of {p.image}")


# -- DeconvNet / guided backprop ------------------------------------------------------------
@dataclass(frozen=True)
class ReconstructParams:
    image: str = param(help="input image file")
    checkpoint: str = param("", "model (default: the worker's --checkpoint)")
    layer: str = param(
        "", "module name of the unit; '' = the model's output (class score / embedding)")
    channel: int = param(-1, "channel of the unit (-1: the strongest for this image)")
    methods: tuple[str, ...] = param(
        ("deconvnet", "guided", "gradient"), "any of deconvnet, guided (guided backprop), gradient")


def run_reconstruct(p: ReconstructParams, ctx: JobContext) -> None:
    from training.visualization.attribution import reconstruct
    from training.visualization.models import load_model
    from training.visualization.plots import image_grid, normalise

    m = load_model(_checkpoint(p.checkpoint, ctx))
    x = m.tensor(p.image)
    imgs, titles = [m.to_image(x)], ["input"]
    for i, method in enumerate(p.methods):
        r = reconstruct(m.model, x, layer=p.layer, channel=p.channel, method=method)
        g = r.image_grad.permute(1, 2, 0).numpy()
        imgs.append(normalise(g if g.shape[2] == 3 else g[..., 0]))
        c, y, xx = r.unit
        titles.append(f"{method}\nchannel {c}" + (f" at (y={y}, x={xx})" if y >= 0 else ""))
        ctx.progress((i + 1) / len(p.methods), method)
    ctx.add_artifact(image_grid(imgs, ctx.path("reconstructions.png"), titles=titles, size=2.5,
                                suptitle="what in the input drives one unit of layer "
                                         f"{p.layer or 'output'}"),
                     "input and its reconstructions from one unit")


# -- gradient ascent ------------------------------------------------------------------------
@dataclass(frozen=True)
class AscentParams:
    checkpoint: str = param("", "model (default: the worker's --checkpoint)")
    target: str = param(
        "channel", "channel (of layer) | output (a class or embedding unit) | direction")
    layer: str = param("", "module name, for target 'channel'")
    index: int = param(0, "channel or output index")
    direction_image: str = param("", "target direction: climb towards this image's embedding")
    steps: int = param(200, "gradient ascent steps")
    lr: float = param(0.05, "step size")
    jitter: int = param(4, "random shift of the image at each step (pixels)")
    blur_sigma: float = param(0.5, "Gaussian blur regulariser (pixels; 0: none)")
    blur_every: int = param(4, "blur every this many steps")
    decay: float = param(1e-3, "L2 decay of the image at each step")
    seed: int = param(0, "seed of the starting noise and the jitter")


def run_ascent(p: AscentParams, ctx: JobContext) -> None:
    import torch

    from training.visualization.models import load_model
    from training.visualization.optimize import (
        AscentConfig,
        channel_objective,
        direction_objective,
        gradient_ascent,
        output_objective,
    )
    from training.visualization.plots import curve, image_grid

    m = load_model(_checkpoint(p.checkpoint, ctx))
    if p.target == "channel":
        obj = channel_objective(m.model, p.layer, p.index)
    elif p.target == "output":
        obj = output_objective(m.model, p.index)
    elif p.target == "direction":
        if not p.direction_image:
            raise ValueError("target 'direction' needs direction_image")
        with torch.no_grad():
            obj = direction_objective(m.model, m.model(m.tensor(p.direction_image))[0])
    else:
        raise ValueError(f"unknown target {p.target!r}; valid: channel, output, direction")
    s = m.spec.input_size
    init = torch.randn(1, m.spec.in_channels, s, s,
                       generator=torch.Generator().manual_seed(p.seed)) * 0.1
    x, hist = gradient_ascent(obj, init, AscentConfig(steps=p.steps, lr=p.lr, jitter=p.jitter,
                                                      blur_sigma=p.blur_sigma,
                                                      blur_every=p.blur_every, decay=p.decay,
                                                      seed=p.seed), progress=ctx.progress)
    what = {"channel": f"{p.layer}[{p.index}]", "output": f"output[{p.index}]",
            "direction": f"embedding of {p.direction_image}"}[p.target]
    ctx.add_artifact(image_grid([m.to_image(x)], ctx.path("ascent.png"), size=4,
                                titles=[f"maximises {what}"]), f"image maximising {what}")
    ctx.add_artifact(curve(hist, ctx.path("objective.png"), title=f"objective: {what}",
                           ylabel="objective"), "objective during the ascent")
    ctx.report.table([{"objective at start": hist[0], "objective at end": hist[-1]}])


# -- Deep Dream -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DreamParams:
    image: str = param(help="input image file")
    checkpoint: str = param("", "model (default: the worker's --checkpoint)")
    layer: str = param("", "module whose activations are amplified (default: the middle ReLU)")
    octaves: int = param(3, "scales processed, smallest first")
    octave_scale: float = param(1.4, "size ratio between octaves")
    steps_per_octave: int = param(10, "gradient steps at each scale")
    lr: float = param(0.02, "step size")
    size: int = param(0, "working size in pixels (0: the model's input size)")


def run_dream(p: DreamParams, ctx: JobContext) -> None:
    import torch.nn.functional as F

    from training.visualization.models import load_model, relu_layers
    from training.visualization.optimize import DreamConfig, activation_energy, deep_dream
    from training.visualization.plots import image_grid

    m = load_model(_checkpoint(p.checkpoint, ctx))
    layer = p.layer or relu_layers(m.model)[len(relu_layers(m.model)) // 2]
    x = m.tensor(p.image)
    if p.size:
        x = F.interpolate(x, size=(p.size, p.size), mode="bilinear", align_corners=False)
    out = deep_dream(m.model, x, layer, DreamConfig(octaves=p.octaves,
                                                    octave_scale=p.octave_scale,
                                                    steps_per_octave=p.steps_per_octave,
                                                    lr=p.lr), progress=ctx.progress)
    before = float(activation_energy(m.model, layer, x).detach())
    after = float(activation_energy(m.model, layer, out).detach())
    ctx.add_artifact(image_grid([m.to_image(x), m.to_image(out)], ctx.path("dream.png"),
                                titles=["input", f"dream on {layer}"], size=4),
                     f"Deep Dream on {layer}")
    ctx.report.table([{"layer": layer, "activation energy before": before,
                       "after": after}])


# -- style transfer -------------------------------------------------------------------------
@dataclass(frozen=True)
class StyleParams:
    content: str = param(help="image whose content is kept")
    style: str = param(help="image whose style (Gram-matrix statistics) is copied")
    checkpoint: str = param("", "model (default: the worker's --checkpoint)")
    content_layer: str = param(
        "", "module of the content loss (default: the second-to-last ReLU of the first half)")
    style_layers: tuple[str, ...] = param(
        (), "modules of the style loss (default: the first four ReLUs)")
    steps: int = param(150, "optimisation steps")
    lr: float = param(0.05, "step size")
    style_weight: float = param(1e4, "weight of the style loss against the content loss")
    size: int = param(0, "working size in pixels (0: the model's input size)")


def run_style(p: StyleParams, ctx: JobContext) -> None:
    import torch.nn.functional as F

    from training.visualization.models import load_model, relu_layers
    from training.visualization.optimize import StyleConfig, style_transfer
    from training.visualization.plots import curve, image_grid

    m = load_model(_checkpoint(p.checkpoint, ctx))
    relus = relu_layers(m.model)
    style_layers = list(p.style_layers) or relus[:4]
    content_layer = p.content_layer or relus[max(0, len(relus) // 2 - 1)]
    c, s = m.tensor(p.content), m.tensor(p.style)
    if p.size:
        c = F.interpolate(c, size=(p.size, p.size), mode="bilinear", align_corners=False)
        s = F.interpolate(s, size=(p.size, p.size), mode="bilinear", align_corners=False)
    r = style_transfer(m.model, c, s, content_layer=content_layer, style_layers=style_layers,
                       cfg=StyleConfig(steps=p.steps, lr=p.lr, style_weight=p.style_weight),
                       progress=ctx.progress)
    ctx.add_artifact(image_grid([m.to_image(c), m.to_image(s), m.to_image(r.image)],
                                ctx.path("style.png"), titles=["content", "style", "result"],
                                size=3), "style transfer")
    ctx.add_artifact(curve(r.style_loss, ctx.path("losses.png"), title="style transfer losses",
                           ylabel="style", more={"content": r.content_loss}, axis_label="loss"),
                     "losses during optimisation")


# -- occlusion --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OcclusionParams:
    image: str = param(help="input image file")
    checkpoint: str = param("", "a classifier (see the 'classifier' job; default: the worker's)")
    class_index: int = param(-1, "class whose probability is mapped (-1: the predicted class)")
    patch: int = param(8, "side of the grey occluding patch (pixels)")
    stride: int = param(2, "step between patch positions (pixels)")


def run_occlusion(p: OcclusionParams, ctx: JobContext) -> None:
    import torch

    from training.visualization.models import load_model
    from training.visualization.occlusion import class_score, occlusion_map
    from training.visualization.plots import save_figure, shared_scale_overlays

    m = load_model(_checkpoint(p.checkpoint, ctx))
    if not m.is_classifier:
        raise ValueError("occlusion of a class score needs a classifier checkpoint "
                         "(for two images and an embedding model, use the 'verify' job)")
    x = m.tensor(p.image)
    with torch.no_grad():
        probs = m.model(x).softmax(1)[0]
    c = int(probs.argmax()) if p.class_index < 0 else p.class_index
    if not 0 <= c < len(m.classes):
        raise ValueError(f"class_index must be below {len(m.classes)}")
    occ = occlusion_map(class_score(m.model, c), x, patch=p.patch, stride=p.stride,
                        progress=ctx.progress)
    name, top = m.classes[c], m.classes[int(probs.argmax())]
    image = m.to_image(x)
    fig = shared_scale_overlays(
        [image, image], [None, occ.heatmap],
        titles=[f"input: {Path(p.image).name}\npredicted '{top}' (p = {float(probs.max()):.3f})",
                f"occlusion map of p('{name}') = {occ.base:.3f}"],
        suptitle=f"which regions make it '{name}': one {p.patch}px patch greyed at a time; "
                 "red regions support the class",
        cbar_label=f"drop of p('{name}') when occluded")
    ctx.add_artifact(save_figure(fig, ctx.path("occlusion.png")),
                     f"occlusion map for class {name}")


@dataclass(frozen=True)
class VerifyParams:
    a: str = param(help="first image file")
    b: str = param(help="second image file")
    checkpoint: str = param("", "embedding model (default: the worker's --checkpoint)")
    threshold: float = param(
        -1.0, "same when the distance is at most this (-1: the checkpoint's calibrated one)")
    occlusion: bool = param(True, "also draw the occlusion heatmap of what makes them match")
    mode: str = param(
        "a", "a | b (occlude one image, the other whole) | both (the same region of both)")
    patch: int = param(8, "side of the grey occluding patch (pixels)")
    stride: int = param(4, "step between patch positions (pixels)")


def run_verify(p: VerifyParams, ctx: JobContext) -> None:
    import torch

    from training.visualization.models import load_model
    from training.visualization.occlusion import verification_occlusion
    from training.visualization.plots import save_figure

    m = load_model(_checkpoint(p.checkpoint, ctx))
    xa, xb = m.tensor(p.a), m.tensor(p.b)
    with torch.no_grad():
        ea, eb = m.model(xa)[0], m.model(xb)[0]
    distance = float(torch.linalg.vector_norm(ea - eb))
    thr = p.threshold if p.threshold >= 0 else m.spec.threshold
    result = {"a": p.a, "b": p.b, "distance": distance,
              "similarity": float(torch.nn.functional.cosine_similarity(ea, eb, dim=0)),
              "threshold": thr, "same": None if thr is None else distance <= thr}
    ctx.report.table([result], "verification")
    ctx.path("verify.json").write_text(json.dumps(result, indent=2))
    ctx.add_artifact(ctx.path("verify.json"), "verification result")
    if p.occlusion:
        v = verification_occlusion(m.model, xa, xb, mode=p.mode, patch=p.patch, stride=p.stride,
                                   progress=ctx.progress)
        fig = why_match_figure([m.to_image(xa), m.to_image(xb)], [v.heatmap_a, v.heatmap_b],
                               names=[Path(p.a).name, Path(p.b).name], mode=p.mode,
                               distance=distance, threshold=thr, patch=p.patch)
        ctx.add_artifact(save_figure(fig, ctx.path("why_match.png")),
                         "which regions make the two images match: red where greying a patch "
                         "lowers their similarity")


def verdict(distance: float, threshold: float | None) -> str:
    """'SAME: distance 0.41 <= threshold 0.80', 'DIFFERENT: ... >', or no verdict without one."""
    if threshold is None:
        return f"NO VERDICT (no calibrated threshold): distance {distance:.3f}"
    same = distance <= threshold
    return (f"{'SAME' if same else 'DIFFERENT'}: distance {distance:.3f} "
            f"{'≤' if same else '>'} threshold {threshold:.3f}")


def why_match_figure(images: list, heatmaps: list, *, names: list[str], mode: str,
                     distance: float, threshold: float | None, patch: int):
    """The verify job's picture: each image with its occlusion heatmap blended over it, both on
    one colour scale, titled with the verdict."""
    from training.visualization.plots import shared_scale_overlays

    if mode == "both":
        titles = [f"a: {names[0]}", f"b: {names[1]}"]
        how = f"the same {patch}px patch greyed in both images"
    else:
        titles = [f"a: {names[0]}\n(patches of a greyed, b whole)",
                  f"b: {names[1]}\n(patches of b greyed, a whole)"]
        how = f"one {patch}px patch greyed at a time"
    return shared_scale_overlays(
        images, heatmaps, titles=titles,
        suptitle=f"{verdict(distance, threshold)}\n{how}: red regions make them alike, blue "
                 "ones set them apart",
        cbar_label="similarity drop when occluded (cosine)")


# -- retrieval gallery ------------------------------------------------------------------------
@dataclass(frozen=True)
class GalleryParams:
    queries: tuple[str, ...] = param(help="query image files, one gallery row each")
    checkpoint: str = param("", "embedding model (default: the worker's --checkpoint)")
    index_root: str = param("", "index searched (default: the worker's)")
    catalog_url: str = param("", "catalogue of that index (default: the worker's)")
    k: int = param(8, "hits shown per query")


def run_gallery(p: GalleryParams, ctx: JobContext) -> None:
    from service.jobs.gallery import retrieval_gallery

    root = p.index_root or ctx.defaults.index_root
    url = p.catalog_url or ctx.defaults.catalog_url
    if not root or not url:
        raise ValueError("the gallery needs an index: 'index_root' and 'catalog_url'")
    png, rows = retrieval_gallery(_checkpoint(p.checkpoint, ctx), root, url, list(p.queries),
                                  k=p.k, out=ctx.path("gallery.png"))
    ctx.add_artifact(png, "queries (left) and their nearest catalogued images with distances")
    ctx.report.table(rows, "hits")


# -- the digit classifier ---------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierParams:
    epochs: int = param(4, "training epochs on the digits")
    width: int = param(8, "channels of the first convolution")
    seed: int = param(0, "seed of the split and the initialisation")


def run_classifier(p: ClassifierParams, ctx: JobContext) -> None:
    from training.checkpoint import load_checkpoint
    from training.visualization.classifier import ClassifierConfig, train_digit_classifier

    path = train_digit_classifier(ClassifierConfig(out=str(ctx.out_dir), epochs=p.epochs,
                                                   width=p.width, seed=p.seed),
                                  progress=ctx.progress)
    ctx.add_artifact(path, "classifier checkpoint")
    ctx.report.table([load_checkpoint(path).metrics], "held-out accuracy")


def from_index(index_root: str, catalog_url: str, *, collection: str = ""):
    """The vectors of the current index version with their catalogue labels and paths."""
    from indexer.catalog import all_images, open_catalog
    from indexer.versions import load_index_version
    from training.visualization.embeddings import EmbeddingSet

    version = load_index_version(index_root)
    sessions = open_catalog(catalog_url)
    with sessions() as s:
        rows = all_images(s, collection=collection or version.manifest.collection)
    vectors, labels, paths, keys = [], [], [], []
    for r in rows:
        try:
            vectors.append(version.index.reconstruct(r.id))
        except RuntimeError:  # catalogued, but not in this version
            continue
        labels.append(r.label)
        paths.append(r.path)
        keys.append(r.key)
    if not vectors:
        raise ValueError(f"index {version.path} holds none of the catalogue's images")
    return EmbeddingSet(np.stack(vectors).astype(np.float32), labels, paths, keys)


# The kinds of this module; service.jobs.registry.load_builtin_kinds registers them.
KINDS = [
    JobKind("tsne", TsneParams, run_tsne,
            "t-SNE map of a collection's embeddings, coloured by label, with thumbnails"),
    JobKind("filters", FiltersParams, run_filters,
            "first-layer filters, and feature maps of chosen layers for an image"),
    JobKind("reconstruct", ReconstructParams, run_reconstruct,
            "DeconvNet and guided-backprop reconstructions of a unit's activation"),
    JobKind("ascent", AscentParams, run_ascent,
            "synthetic image maximising a channel, class score or embedding direction (jitter, "
            "blur, decay)"),
    JobKind("deepdream", DreamParams, run_dream,
            "Deep Dream: amplify a layer's activations, with octaves"),
    JobKind("style-transfer", StyleParams, run_style,
            "Gatys style transfer: content of one image, Gram-matrix style statistics of another"),
    JobKind("occlusion", OcclusionParams, run_occlusion,
            "occlusion map of a classifier's class probability"),
    JobKind("verify", VerifyParams, run_verify,
            "verify two images; optionally an occlusion heatmap of the regions that make them "
            "match"),
    JobKind("gallery", GalleryParams, run_gallery,
            "retrieval gallery: each query and its top-k hits with distances"),
    JobKind("classifier", ClassifierParams, run_classifier,
            "train the small digit classifier used by the classifier demos"),
]
