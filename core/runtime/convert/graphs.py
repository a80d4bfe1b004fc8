"""Build the bundle's ONNX graphs from numpy weights with ``onnx.helper`` (opset 17).

The graphs compute what open_clip's CLIP.encode_image / encode_text compute, followed by L2 normalisation:

- ViT: patch convolution, class token, positional embedding, ln_pre, pre-norm residual blocks
  (LayerNormalization, multi-head attention as MatMul/Softmax, MLP with QuickGELU or exact GELU), ln_post on
  the class token, projection;
- ModifiedResNet (RN50): three-convolution stem, Bottleneck stages with average-pool downsampling
  (BatchNorm folded into the convolutions), attention pooling over the mean token and the grid;
- text: token embedding, positional embedding, the same blocks under a causal mask, pooling at the
  end-of-text token (argmax over the ids, as open_clip, on int32 since onnxruntime has no int64 ArgMax),
  ln_final, projection.

I/O as training.export writes them (docs/ARCHITECTURE.md "Model bundle"): ``pixel_values`` (N,3,H,W)
float32 -> ``image_embeds`` (N,D) float32; ``input_ids`` (N,L) int64 -> ``text_embeds`` (N,D) float32;
N dynamic. In fp16 graphs the weights and matrix products are float16; LayerNormalization and the final
normalisation stay float32 (as training.export's fp16 graphs), inputs and outputs are float32.

Weights are not copied into protobuf messages: ``Graph.save`` streams each initializer's bytes from the
state dict into the file (transposed, folded or cast one tensor at a time), so the converter's memory
stays close to one copy of the checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: loads in every onnxruntime since 1.13
LN_EPS = 1e-5
BN_EPS = 1e-5
ACTIVATIONS = ("quick_gelu", "gelu")


def _onnx():
    import onnx

    return onnx


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class Graph:
    """A graph under construction: nodes now, initializer data later (``weight(fn, shape)`` keeps ``fn``)."""

    def __init__(self, name: str, fp16: bool = False):
        self.name = name
        self.fp16 = fp16
        self.float = np.float16 if fp16 else np.float32
        self.nodes: list = []
        self.inits: list[tuple[str, tuple[int, ...], np.dtype, object]] = []
        self.inputs: list = []
        self.outputs: list = []
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def weight(self, fn, shape, name: str | None = None, dtype=None) -> str:
        """An initializer whose data ``fn()`` gives at save time (cast to ``dtype``, default the compute type)."""
        name = name or self._name("w")
        self.inits.append((name, tuple(int(s) for s in shape), np.dtype(dtype or self.float), fn))
        return name

    def const(self, value, dtype=None) -> str:
        """A small constant: floats in the compute type unless ``dtype`` says otherwise, integers as given."""
        a = np.asarray(value)
        a = a.astype(dtype or (self.float if a.dtype.kind == "f" else a.dtype))
        return self.weight(lambda: a, a.shape, dtype=a.dtype)

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs):
        onnx = _onnx()
        outs = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), outs, name=name or self._name(op_type),
                                                **attrs))
        return outs[0] if outputs == 1 else outs

    def input(self, name: str, elem_type: int, shape) -> str:
        self.inputs.append(_onnx().helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape) -> None:
        self.op("Identity", value, name=f"{name}_out")
        self.nodes[-1].output[0] = name
        self.outputs.append(_onnx().helper.make_tensor_value_info(name, elem_type, shape))

    # -- saving ---------------------------------------------------------------------------------------------

    def check(self) -> None:
        """onnx.checker with type and shape inference, on the graph without its weights' data: each
        initializer stands in as a graph input of its type and shape, which types the graph the same way."""
        onnx = _onnx()
        helper = onnx.helper
        stand_ins = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), list(shape))
                     for name, shape, dtype, _fn in self.inits]
        graph = helper.make_graph(self.nodes, self.name, self.inputs + stand_ins, self.outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
        onnx.checker.check_model(model, full_check=True)

    def save(self, path, producer: str, producer_version: str) -> None:
        """Write the model, streaming initializer data (a ModelProto parses with its fields in any order)."""
        onnx = _onnx()
        helper, TensorProto = onnx.helper, onnx.TensorProto
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs)
        model = onnx.ModelProto()
        model.ir_version = IR_VERSION
        model.producer_name, model.producer_version = producer, producer_version
        model.opset_import.extend([helper.make_opsetid("", OPSET)])
        headers = []
        total = 0
        for name, shape, dtype, _fn in self.inits:
            t = TensorProto()
            t.name = name
            t.dims.extend(shape)
            t.data_type = helper.np_dtype_to_tensor_dtype(dtype)
            head = t.SerializeToString()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = len(head) + 1 + len(_varint(nbytes)) + nbytes  # + raw_data (field 9)
            headers.append((head, nbytes, size))
            total += 1 + len(_varint(size)) + size  # graph.initializer (field 5)
        graph_bytes = graph.SerializeToString()
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
            f.write(b"\x3a" + _varint(len(graph_bytes) + total))  # model.graph (field 7)
            f.write(graph_bytes)
            for (name, shape, dtype, fn), (head, nbytes, size) in zip(self.inits, headers, strict=True):
                data = np.asarray(fn()).astype(dtype.newbyteorder("<"), order="C", copy=False)
                if data.shape != shape:
                    raise ValueError(f"initializer {name}: shape {data.shape}, declared {shape}")
                f.write(b"\x2a" + _varint(size) + head + b"\x4a" + _varint(nbytes))
                f.write(memoryview(data).cast("B"))
                del data


# --- building blocks -----------------------------------------------------------------------------------------

class Builder:
    """Ops shared by the towers, reading weights from a state dict by key."""

    def __init__(self, g: Graph, sd: dict, activation: str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        self.g, self.sd, self.activation = g, sd, activation

    def w(self, key: str, dtype=None) -> str:
        a = self.sd[key]
        return self.g.weight(lambda: self.sd[key], a.shape, dtype=dtype)

    def linear(self, x: str, prefix: str, rows_scale=None) -> str:
        """x @ W.T + b of an nn.Linear (``prefix.weight``, ``prefix.bias``) on a 2-D x, as one Gemm (weights
        kept in torch's (out, in) layout); ``rows_scale`` (out,) multiplies output features (folded in)."""
        sd, g = self.sd, self.g
        # nn.MultiheadAttention names its input projection in_proj_weight / in_proj_bias
        wkey, bkey = (prefix + "_weight", prefix + "_bias") if prefix.endswith(".in_proj") else \
            (prefix + ".weight", prefix + ".bias")
        shape = sd[wkey].shape

        def weight():
            w = sd[wkey]
            return w if rows_scale is None else w * rows_scale[:, None]

        def bias():
            b = sd[bkey]
            return b if rows_scale is None else b * rows_scale

        return g.op("Gemm", x, g.weight(weight, shape), g.weight(bias, shape[:1]), transB=1)

    def layer_norm(self, x: str, prefix: str) -> str:
        g, f32 = self.g, np.float32
        onnx = _onnx()
        if g.fp16:
            x = g.op("Cast", x, to=onnx.TensorProto.FLOAT)
        y = g.op("LayerNormalization", x, self.w(prefix + ".weight", f32), self.w(prefix + ".bias", f32),
                 axis=-1, epsilon=LN_EPS)
        return g.op("Cast", y, to=onnx.TensorProto.FLOAT16) if g.fp16 else y

    def act(self, x: str) -> str:
        g = self.g
        if self.activation == "quick_gelu":  # x * sigmoid(1.702 x), OpenAI CLIP's
            return g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, g.const(1.702))))
        # exact GELU, 0.5 x (1 + erf(x / sqrt 2)), in the form onnxruntime fuses into one Gelu kernel
        e = g.op("Erf", g.op("Div", x, g.const(math.sqrt(2.0))))
        return g.op("Mul", g.op("Mul", x, g.op("Add", e, g.const(1.0))), g.const(0.5))

    def attend(self, q: str, k: str, v: str, width: int, mask: str | None = None) -> str:
        """softmax(q k^T [+ mask]) v for (N, H, L, hd) heads (q pre-scaled) -> (N * Lq, width).

        k^T as a Transpose of the last two axes, which onnxruntime folds into the product (FusedMatMul)."""
        g = self.g
        s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
        if mask is not None:
            s = g.op("Add", s, mask)
        o = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
        return g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), g.ints([-1, width]))

    def shape(self, *dims) -> str:
        """A shape tensor from whole numbers and 1-D int64 tensors (a length known only at run time)."""
        g = self.g
        if all(isinstance(d, int) for d in dims):
            return g.ints(list(dims))
        return g.op("Concat", *(g.ints([d]) if isinstance(d, int) else d for d in dims), axis=0)

    def block(self, x: str, prefix: str, width: int, heads: int, length, mask: str | None = None) -> str:
        """open_clip's ResidualAttentionBlock on the (N * L, width) residual stream: x + attn(ln_1(x)),
        then x + mlp(ln_2(x)). Attention projects q, k, v with one Gemm (nn.MultiheadAttention's in_proj),
        the query rows scaled by 1/sqrt(head width). ``length``: L, a whole number or a 1-D int64 tensor."""
        g = self.g
        hd = width // heads
        scale = np.ones(3 * width, np.float32)
        scale[:width] = hd ** -0.5
        h = self.layer_norm(x, prefix + ".ln_1")
        qkv = self.linear(h, prefix + ".attn.in_proj", rows_scale=scale)  # in_proj_weight / in_proj_bias
        qkv = g.op("Transpose", g.op("Reshape", qkv, self.shape(-1, length, 3, heads, hd)), perm=[2, 0, 3, 1, 4])
        q, k, v = (g.op("Squeeze", t, g.ints([0])) for t in g.op("Split", qkv, g.ints([1, 1, 1]), axis=0, outputs=3))
        x = g.op("Add", x, self.linear(self.attend(q, k, v, width, mask), prefix + ".attn.out_proj"))
        h = self.layer_norm(x, prefix + ".ln_2")
        h = self.linear(self.act(self.linear(h, prefix + ".mlp.c_fc")), prefix + ".mlp.c_proj")
        return g.op("Add", x, h)

    def normalize_output(self, x: str, name: str, dim: int) -> None:
        """F.normalize(x, dim=-1) in float32, as the graph's float32 output."""
        g = self.g
        onnx = _onnx()
        if g.fp16:
            x = g.op("Cast", x, to=onnx.TensorProto.FLOAT)
        n = g.op("Max", g.op("ReduceL2", x, axes=[-1], keepdims=1), g.const(1e-12, np.float32))
        g.output(g.op("Div", x, n), name, onnx.TensorProto.FLOAT, ["batch", dim])


# --- towers ------------------------------------------------------------------------------------------------

def _pixels(g: Graph, size: int) -> str:
    onnx = _onnx()
    x = g.input("pixel_values", onnx.TensorProto.FLOAT, ["batch", 3, size, size])
    return g.op("Cast", x, to=onnx.TensorProto.FLOAT16) if g.fp16 else x


def vit_image_graph(sd: dict, cfg: dict, activation: str, fp16: bool = False) -> Graph:
    v = cfg["vision_cfg"]
    width, patch, size = v["width"], v["patch_size"], v["image_size"]
    heads = width // v.get("head_width", 64)
    g = Graph("image_encoder", fp16)
    b = Builder(g, sd, activation)
    pixels = _pixels(g, size)
    x = g.op("Conv", pixels, b.w("visual.conv1.weight"), kernel_shape=[patch, patch], strides=[patch, patch])
    x = g.op("Transpose", g.op("Reshape", x, g.ints([0, width, -1])), perm=[0, 2, 1])  # (N, grid², width)
    pos = sd["visual.positional_embedding"]
    x = g.op("Add", x, g.weight(lambda: pos[1:], (pos.shape[0] - 1, width)))
    cls = g.weight(lambda: (sd["visual.class_embedding"] + pos[0]).reshape(1, 1, width), (1, 1, width))
    batch = g.op("Shape", "pixel_values", start=0, end=1)
    cls = g.op("Expand", cls, g.op("Concat", batch, g.ints([1, width]), axis=0))
    x = g.op("Concat", cls, x, axis=1)
    length = pos.shape[0]
    x = g.op("Reshape", b.layer_norm(x, "visual.ln_pre"), g.ints([-1, width]))  # (N * L, width)
    for i in range(v["layers"]):
        x = b.block(x, f"visual.transformer.resblocks.{i}", width, heads, length)
    x = g.op("Gather", g.op("Reshape", x, g.ints([-1, length, width])), g.ints(0), axis=1)  # class token
    x = b.layer_norm(x, "visual.ln_post")
    x = g.op("MatMul", x, b.w("visual.proj"))
    b.normalize_output(x, "image_embeds", cfg["embed_dim"])
    return g


def _folded_conv(b: Builder, x: str, conv: str, bn: str, stride: int = 1) -> str:
    """Conv (no bias) followed by eval-mode BatchNorm, folded into one Conv with bias."""
    sd, g = b.sd, b.g
    w = sd[conv + ".weight"]
    k = w.shape[-1]

    def factor():
        return (sd[bn + ".weight"].astype(np.float64) / np.sqrt(sd[bn + ".running_var"].astype(np.float64) + BN_EPS))

    wt = g.weight(lambda: (w * factor()[:, None, None, None]).astype(np.float32), w.shape)
    bias = g.weight(lambda: (sd[bn + ".bias"] - sd[bn + ".running_mean"] * factor()).astype(np.float32),
                    (w.shape[0],))
    return g.op("Conv", x, wt, bias, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)


def _avgpool(g: Graph, x: str, k: int) -> str:
    return x if k == 1 else g.op("AveragePool", x, kernel_shape=[k, k], strides=[k, k])


def resnet_image_graph(sd: dict, cfg: dict, activation: str, fp16: bool = False) -> Graph:
    v = cfg["vision_cfg"]
    width, size = v["width"], v["image_size"]
    g = Graph("image_encoder", fp16)
    b = Builder(g, sd, activation)
    x = _pixels(g, size)
    x = g.op("Relu", _folded_conv(b, x, "visual.conv1", "visual.bn1", stride=2))
    x = g.op("Relu", _folded_conv(b, x, "visual.conv2", "visual.bn2"))
    x = g.op("Relu", _folded_conv(b, x, "visual.conv3", "visual.bn3"))
    x = _avgpool(g, x, 2)
    for stage, blocks in enumerate(v["layers"]):
        for i in range(blocks):
            p = f"visual.layer{stage + 1}.{i}"
            stride = 2 if stage > 0 and i == 0 else 1
            h = g.op("Relu", _folded_conv(b, x, p + ".conv1", p + ".bn1"))
            h = g.op("Relu", _folded_conv(b, h, p + ".conv2", p + ".bn2"))
            h = _folded_conv(b, _avgpool(g, h, stride), p + ".conv3", p + ".bn3")
            if p + ".downsample.0.weight" in sd:
                x = _folded_conv(b, _avgpool(g, x, stride), p + ".downsample.0", p + ".downsample.1")
            x = g.op("Relu", g.op("Add", h, x))
    # attention pooling: the mean token attends to itself and the grid
    feat = width * 32
    heads = feat // v.get("head_width", 64)
    x = g.op("Transpose", g.op("Reshape", x, g.ints([0, feat, -1])), perm=[0, 2, 1])  # (N, HW, C)
    x = g.op("Concat", g.op("ReduceMean", x, axes=[1], keepdims=1), x, axis=1)
    x = g.op("Add", x, b.w("visual.attnpool.positional_embedding"))
    length, hd = (size // 32) ** 2 + 1, feat // heads
    q = g.op("Reshape", g.op("Gather", x, g.ints(0), axis=1), g.ints([-1, feat]))  # only the mean token's output
    x = g.op("Reshape", x, g.ints([-1, feat]))

    def split_heads(t, n):
        return g.op("Transpose", g.op("Reshape", t, g.ints([-1, n, heads, hd])), perm=[0, 2, 1, 3])

    scale = np.full(feat, hd ** -0.5, np.float32)
    q = split_heads(b.linear(q, "visual.attnpool.q_proj", rows_scale=scale), 1)
    k = split_heads(b.linear(x, "visual.attnpool.k_proj"), length)
    v = split_heads(b.linear(x, "visual.attnpool.v_proj"), length)
    x = b.linear(b.attend(q, k, v, feat), "visual.attnpool.c_proj")  # (N, embed)
    b.normalize_output(x, "image_embeds", cfg["embed_dim"])
    return g


def image_graph(sd: dict, cfg: dict, activation: str, fp16: bool = False) -> Graph:
    build = resnet_image_graph if isinstance(cfg["vision_cfg"]["layers"], list) else vit_image_graph
    return build(sd, cfg, activation, fp16)


def text_graph(sd: dict, cfg: dict, activation: str, fp16: bool = False) -> Graph:
    onnx = _onnx()
    t = cfg["text_cfg"]
    width, context = t["width"], t["context_length"]
    g = Graph("text_encoder", fp16)
    b = Builder(g, sd, activation)
    # the token axis is dynamic (L <= context length): attention is causal and the text is pooled at its
    # end-of-text token, so ids cut after the last end-of-text token of a batch give the same embeddings
    # for a fraction of the work (core.runtime.inference trims them); the full 77 tokens run as before
    ids = g.input("input_ids", onnx.TensorProto.INT64, ["batch", "tokens"])
    length = g.op("Slice", g.op("Shape", ids), g.ints([1]), g.ints([2]))   # [L]
    x = g.op("Gather", b.w("token_embedding.weight"), ids, axis=0)  # (N, L, width)
    pos = g.op("Slice", b.w("positional_embedding"), g.ints([0]), length, g.ints([0]))
    x = g.op("Reshape", g.op("Add", x, pos), g.ints([-1, width]))  # (N * L, width)
    full = g.const(np.triu(np.full((context, context), -np.inf, dtype=np.float32), 1))  # causal
    mask = g.op("Slice", full, g.ints([0, 0]), g.op("Concat", length, length, axis=0), g.ints([0, 1]))
    for i in range(t["layers"]):
        x = b.block(x, f"transformer.resblocks.{i}", width, t["heads"], length, mask)
    # open_clip pools at ids.argmax(-1): the end-of-text token, the largest id (first one on ties)
    eot = g.op("ArgMax", g.op("Cast", ids, to=onnx.TensorProto.INT32), axis=1, keepdims=1)
    x = g.op("Reshape", x, b.shape(-1, length, width))
    x = g.op("GatherND", x, eot, batch_dims=1)  # (N, width); LayerNorm is per token, so pooling first is exact
    x = b.layer_norm(x, "ln_final")
    x = g.op("MatMul", x, b.w("text_projection"))
    b.normalize_output(x, "text_embeds", cfg["embed_dim"])
    return g


def write_graph(graph: Graph, path, version: str) -> Path:
    """Save and check the graph (onnx.checker on the file)."""
    path = Path(path)
    graph.check()
    graph.save(path, "remoteclip-qgis core.runtime.convert", version)
    return path
