"""dlib DNN files: parse a serialised ``loss_metric`` network into plain layers, and write one back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.dlib.serialize import DlibFormatError, DlibReader, DlibWriter

INPUT_LAYERS = ("input_rgb_image_sized",)
LAYER_KINDS = {  # version string -> kind
    "con_4": "con", "con_5": "con", "con_6": "con",
    "affine_": "affine", "affine_2": "affine",
    "relu_": "relu",
    "max_pool_2": "max_pool", "avg_pool_2": "avg_pool",
    "fc_2": "fc",
    "add_prev_": "add_prev",
}


@dataclass
class DlibLayer:
    """One computational layer of a dlib network (tags and skips are structure, not layers)."""

    kind: str  # con | affine | relu | max_pool | avg_pool | fc | add_prev
    version: str  # the version string found in the file, e.g. "con_4"
    attrs: dict[str, Any] = field(default_factory=dict)
    params: np.ndarray | None = None  # flat float32 parameter vector, dlib's layout

    def describe(self) -> str:
        keys = ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x",
                "num_outputs", "num_inputs")
        shown = ",".join(f"{k}={self.attrs[k]}" for k in keys if k in self.attrs)
        return f"{self.kind}({shown})"


@dataclass
class DlibNet:
    """A parsed dlib network: input layer settings, layers from input to output, and the loss."""

    input_layer: str
    input_mean: tuple[float, float, float]  # RGB means in 0..255, subtracted before /256
    input_size: tuple[int, int]  # (rows, cols)
    layers: list[DlibLayer]
    loss: str
    loss_params: dict[str, float]
    num_wrappers: int  # add_layer + tag + skip wrappers (structure check)


# ---------------------------------------------------------------------------------------------
# Reading


def _read_details(r: DlibReader) -> DlibLayer:
    version = r.string()
    kind = LAYER_KINDS.get(version)
    if kind is None:
        raise r._fail(f"unsupported dlib layer {version!r} (supported: {', '.join(LAYER_KINDS)})")
    layer = DlibLayer(kind, version)
    a = layer.attrs
    if kind == "con":
        layer.params = r.tensor().ravel()
        a["num_filters"] = r.int()
        a["nr"], a["nc"], a["stride_y"], a["stride_x"] = (r.int() for _ in range(4))
        a["padding_y"], a["padding_x"] = r.int(), r.int()
        a["filters_shape"] = r.alias_tensor()
        a["biases_shape"] = r.alias_tensor()
        a["multipliers"] = [r.float() for _ in range(4)]
        a["use_bias"] = r.bool() if version in ("con_5", "con_6") else True
        if version == "con_6" and r.bool():
            raise r._fail("con_ with a fused relu is not supported")
    elif kind == "affine":
        layer.params = r.tensor().ravel()
        a["gamma_shape"] = r.alias_tensor()
        a["beta_shape"] = r.alias_tensor()
        # "affine_" gained a mode field in 2016; older files go straight to the add_layer bools.
        a["mode"] = r.int() if r.peek_byte() not in (0x30, 0x31) else 0  # CONV_MODE
        if version == "affine_2" and r.bool():
            a["disabled"] = True
    elif kind in ("max_pool", "avg_pool"):
        a["nr"], a["nc"], a["stride_y"], a["stride_x"] = (r.int() for _ in range(4))
        a["padding_y"], a["padding_x"] = r.int(), r.int()
    elif kind == "fc":
        a["num_outputs"], a["num_inputs"] = r.int(), r.int()
        layer.params = r.tensor().ravel()
        a["weights_shape"] = r.alias_tensor()
        a["biases_shape"] = r.alias_tensor()
        a["bias_mode"] = r.int()  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
        a["multipliers"] = [r.float() for _ in range(4)]
    return layer


def _next_is_layer(r: DlibReader) -> bool:
    return r.peek_string() in LAYER_KINDS


def parse_network(data: bytes, *, name: str = "<bytes>") -> DlibNet:
    """Parse a serialised ``add_loss_layer<...>`` network (e.g. dlib's face ResNet)."""
    r = DlibReader(data, name=name)
    r.version({1}, "add_loss_layer")
    loss = r.string()
    loss_params: dict[str, float] = {}
    if loss == "loss_metric_2":
        loss_params = {"margin": r.float(), "dist_thresh": r.float()}
    elif loss != "loss_metric_":
        raise r._fail(f"unsupported loss layer {loss!r} (expected a loss_metric network)")

    # Wrapper versions, outermost first, until the add_layer that sits on the input layer.
    wrappers = 0
    while True:
        v = r.int()
        s = r.peek_string()
        if s in INPUT_LAYERS:
            if v not in (2, 3):
                raise r._fail(f"unexpected input add_layer version {v}")
            input_version = v
            break
        if v not in (1, 2):
            raise r._fail(f"unexpected layer wrapper version {v}")
        wrappers += 1
        if wrappers > 100_000:
            raise r._fail("no input layer found")
    input_layer = r.string()
    mean = (r.float(), r.float(), r.float())
    size = (r.uint(), r.uint())

    layers = [_read_details(r)]
    for _ in range(3):
        r.bool()
    for _ in range(3):  # x_grad, cached_output, grad_final
        r.tensor()
    if input_version == 3:
        r.uint()  # sample expansion factor
    while not r.at_end:
        layers.append(_read_details(r))
        for _ in range(3):
            r.bool()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if not r.at_end and not _next_is_layer(r):
            r.tensor()  # params_grad (add_layer version 2)
    return DlibNet(input_layer, mean, size, layers, loss, loss_params, wrappers + 1)


def read_network(path: str | Path) -> DlibNet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file not found: {path}")
    return parse_network(path.read_bytes(), name=str(path))


# ---------------------------------------------------------------------------------------------
# The face recognition network (dlib's anet_type), as a token list from input to output.
# Tokens: ("con", n, k, stride), ("affine",), ("relu",), ("max_pool", k, stride),
# ("avg_pool", k, stride) with k=0 meaning "everything", ("fc", n), ("add_prev", tag),
# ("tag", id), ("skip", id).


def _block(n: int, stride: int) -> list[tuple]:
    return [("con", n, 3, stride), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",)]


def _ares(n: int) -> list[tuple]:
    return [("tag", 1), *_block(n, 1), ("add_prev", 1), ("relu",)]


def _ares_down(n: int) -> list[tuple]:
    return [("tag", 1), *_block(n, 2), ("tag", 2), ("skip", 1), ("avg_pool", 2, 2),
            ("add_prev", 2), ("relu",)]


def face_resnet_tokens() -> list[tuple]:
    """dlib's ``anet_type`` (dnn_face_recognition_ex.cpp), input to output, loss excluded."""
    t: list[tuple] = [("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]
    t += _ares(32) * 3                              # alevel4
    t += _ares_down(64) + _ares(64) * 3             # alevel3
    t += _ares_down(128) + _ares(128) * 2           # alevel2
    t += _ares_down(256) + _ares(256) * 2           # alevel1
    t += _ares_down(256)                            # alevel0
    t += [("avg_pool", 0, 1), ("fc", 128)]
    return t


def check_face_resnet(net: DlibNet) -> None:
    """Raise DlibFormatError unless ``net`` is dlib's 29-conv face ResNet (anet_type)."""
    tokens = face_resnet_tokens()
    expected = [t for t in tokens if t[0] not in ("tag", "skip")]
    if net.input_layer != "input_rgb_image_sized" or net.input_size != (150, 150):
        raise DlibFormatError(f"expected a 150x150 RGB input layer, got {net.input_layer} "
                              f"{net.input_size}")
    if len(net.layers) != len(expected) or net.num_wrappers != len(tokens):
        raise DlibFormatError(f"expected dlib's face ResNet ({len(expected)} layers, "
                              f"{len(tokens)} wrappers), got {len(net.layers)} layers and "
                              f"{net.num_wrappers} wrappers")
    for i, (tok, layer) in enumerate(zip(expected, net.layers, strict=True)):
        a = layer.attrs
        ok = tok[0] == layer.kind
        if ok and tok[0] == "con":
            pad = 0 if tok[3] != 1 else tok[2] // 2
            ok = (a["num_filters"], a["nr"], a["nc"], a["stride_y"], a["stride_x"],
                  a["padding_y"], a["padding_x"]) == (tok[1], tok[2], tok[2], tok[3], tok[3],
                                                      pad, pad)
        elif ok and tok[0] in ("max_pool", "avg_pool"):
            ok = (a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["padding_y"],
                  a["padding_x"]) == (tok[1], tok[1], tok[2], tok[2], 0, 0)
        elif ok and tok[0] == "fc":
            ok = a["num_outputs"] == tok[1] and a["bias_mode"] == 1
        if not ok:
            raise DlibFormatError(f"layer {i}: expected {tok}, found {layer.describe()}")


# ---------------------------------------------------------------------------------------------
# Writing (test fixtures: a network dlib itself can load, with weights of our choosing)


def _write_details(w: DlibWriter, tok: tuple, params: np.ndarray | None, in_ch: int) -> None:
    kind = tok[0]
    if kind == "con":
        n, k, stride = tok[1], tok[2], tok[3]
        pad = 0 if stride != 1 else k // 2
        w.string("con_4")
        w.tensor(params)
        w.int(n)
        for v in (k, k, stride, stride, pad, pad):
            w.int(v)
        w.alias_tensor((n, in_ch, k, k))
        w.alias_tensor((1, n, 1, 1))
        for v in (1.0, 1.0, 1.0, 0.0):
            w.float(v)
    elif kind == "affine":
        w.string("affine_")
        w.tensor(params)
        c = len(params) // 2
        w.alias_tensor((1, c, 1, 1))
        w.alias_tensor((1, c, 1, 1))
        w.int(0)  # CONV_MODE
    elif kind == "relu":
        w.string("relu_")
    elif kind in ("max_pool", "avg_pool"):
        w.string(f"{kind}_2")
        for v in (tok[1], tok[1], tok[2], tok[2], 0, 0):
            w.int(v)
    elif kind == "fc":
        n = tok[1]
        w.string("fc_2")
        w.int(n)
        w.int(in_ch)
        w.tensor(params)
        w.alias_tensor((in_ch, n, 1, 1))
        w.alias_tensor((1, n, 1, 1))
        w.int(1)  # FC_NO_BIAS
        for v in (1.0, 1.0, 1.0, 0.0):
            w.float(v)
    elif kind == "add_prev":
        w.string("add_prev_")
    else:  # pragma: no cover
        raise ValueError(tok)


def write_face_resnet(params: list[np.ndarray | None], *, mean: tuple[float, float, float],
                      margin: float = 0.04, dist_thresh: float = 0.6) -> bytes:
    """Serialise dlib's face ResNet with the given flat per-layer parameters (one entry per
    computational layer, input to output; None for parameter-free layers)."""
    tokens = face_resnet_tokens()
    w = DlibWriter()
    w.int(1)
    w.string("loss_metric_2")
    w.float(margin)
    w.float(dist_thresh)
    for tok in reversed(tokens[1:]):  # wrapper versions, outermost first
        w.int(2 if tok[0] not in ("tag", "skip") else 1)
    w.int(3)
    w.string("input_rgb_image_sized")
    for m in mean:
        w.float(m)
    w.uint(150)
    w.uint(150)
    comp = iter(params)
    channels = 3
    first = True
    for tok in tokens:
        if tok[0] in ("tag", "skip"):
            continue
        p = next(comp)
        _write_details(w, tok, p, channels)
        # this_layer_setup_called must be true, or dlib re-initialises the parameters
        for flag in (True, True, False):
            w.bool(flag)
        w.tensor(None)
        w.tensor(None)
        w.tensor(None)  # grad_final (input add_layer) or params_grad (add_layer v2)
        if first:
            w.uint(1)
            first = False
        if tok[0] in ("con", "fc"):
            channels = tok[1]
    return w.getvalue()
