"""CLIP's forward pass in plain numpy (float64), the converter's yardstick when there is no PyTorch.

Written from open_clip's module definitions independently of the graph builder (graphs.py): BatchNorm is
applied as BatchNorm here, not folded; attention is computed per head on the full sequence; the text
tower normalises every token before pooling. A mistake in either shows up as a disagreement in the
parity check that ``convert_checkpoint`` runs before it writes a bundle.
"""

from __future__ import annotations

import numpy as np

LN_EPS = 1e-5
BN_EPS = 1e-5


def erf(x: np.ndarray) -> np.ndarray:
    """erf to about 1e-13, vectorised (numpy has none): Taylor series below 2.5, continued fraction of erfc above."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    small = np.minimum(a, 2.5)
    term = small.copy()
    total = small.copy()
    sq = small * small
    for n in range(1, 80):  # sum (-1)^n x^(2n+1) / (n! (2n+1))
        term = term * -sq / n
        total += term / (2 * n + 1)
    out = total * (2.0 / np.sqrt(np.pi))
    big = np.maximum(a, 2.5)
    k = big.copy()
    for n in range(60, 0, -1):  # erfc(x) = exp(-x^2) / sqrt(pi) / (x + (1/2) / (x + 1 / (x + (3/2) / ...)))
        k = big + (n / 2.0) / k
    out = np.where(a > 2.5, 1.0 - np.exp(-big * big) / (np.sqrt(np.pi) * k), out)
    return np.sign(x) * out


class Reference:
    def __init__(self, state_dict: dict, cfg: dict, activation: str = "quick_gelu"):
        self.sd, self.cfg, self.activation = state_dict, cfg, activation

    def p(self, key: str) -> np.ndarray:
        return np.asarray(self.sd[key], dtype=np.float64)

    # -- pieces -----------------------------------------------------------------------------------------------

    def layer_norm(self, x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + LN_EPS) * self.p(prefix + ".weight") + self.p(prefix + ".bias")

    def linear(self, x, prefix):
        return x @ self.p(prefix + ".weight").T + self.p(prefix + ".bias")

    def act(self, x):
        if self.activation == "quick_gelu":
            return x / (1.0 + np.exp(-1.702 * x))
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))

    @staticmethod
    def softmax(x):
        x = x - x.max(-1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(-1, keepdims=True)

    @staticmethod
    def mha(q, k, v, heads, mask=None):
        """q (N, Lq, E), k and v (N, L, E) already projected -> (N, Lq, E)."""
        n, lq, e = q.shape
        hd = e // heads
        q = q.reshape(n, lq, heads, hd).transpose(0, 2, 1, 3)
        k = k.reshape(n, -1, heads, hd).transpose(0, 2, 1, 3)
        v = v.reshape(n, -1, heads, hd).transpose(0, 2, 1, 3)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        if mask is not None:
            s = s + mask
        return (Reference.softmax(s) @ v).transpose(0, 2, 1, 3).reshape(n, lq, e)

    def block(self, x, prefix, heads, mask=None):
        h = self.layer_norm(x, prefix + ".ln_1")
        w, b = self.p(prefix + ".attn.in_proj_weight"), self.p(prefix + ".attn.in_proj_bias")
        q, k, v = np.split(h @ w.T + b, 3, axis=-1)
        x = x + self.linear(self.mha(q, k, v, heads, mask), prefix + ".attn.out_proj")
        h = self.layer_norm(x, prefix + ".ln_2")
        return x + self.linear(self.act(self.linear(h, prefix + ".mlp.c_fc")), prefix + ".mlp.c_proj")

    def conv(self, x, key, stride=1, pad=0):
        w = self.p(key)
        k = w.shape[-1]
        if pad:
            x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
        return np.tensordot(win, w, axes=((1, 4, 5), (1, 2, 3))).transpose(0, 3, 1, 2)

    def bn(self, x, prefix):
        scale = self.p(prefix + ".weight") / np.sqrt(self.p(prefix + ".running_var") + BN_EPS)
        shift = self.p(prefix + ".bias") - self.p(prefix + ".running_mean") * scale
        return x * scale[:, None, None] + shift[:, None, None]

    @staticmethod
    def avgpool(x, k):
        if k == 1:
            return x
        n, c, h, w = x.shape
        x = x[:, :, : h // k * k, : w // k * k]
        return x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))

    @staticmethod
    def normalize(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    # -- towers -----------------------------------------------------------------------------------------------

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """pixel_values (N, 3, H, W) -> L2-normalised image embeddings (N, D), float64."""
        x = np.asarray(pixels, dtype=np.float64)
        v = self.cfg["vision_cfg"]
        if isinstance(v["layers"], list):
            return self.normalize(self._resnet(x, v))
        w = self.p("visual.conv1.weight")
        width, p = w.shape[0], w.shape[-1]
        n, _, h, _ = x.shape
        grid = h // p
        # the patch convolution is a matrix product over non-overlapping patches
        patches = x.reshape(n, 3, grid, p, grid, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, -1)
        x = patches @ w.reshape(width, -1).T
        cls = np.broadcast_to(self.p("visual.class_embedding"), (n, 1, width))
        x = np.concatenate([cls, x], axis=1) + self.p("visual.positional_embedding")
        x = self.layer_norm(x, "visual.ln_pre")
        heads = width // v.get("head_width", 64)
        for i in range(v["layers"]):
            x = self.block(x, f"visual.transformer.resblocks.{i}", heads)
        x = self.layer_norm(x, "visual.ln_post")[:, 0]
        return self.normalize(x @ self.p("visual.proj"))

    def _resnet(self, x, v):
        relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
        x = relu(self.bn(self.conv(x, "visual.conv1.weight", stride=2, pad=1), "visual.bn1"))
        x = relu(self.bn(self.conv(x, "visual.conv2.weight", pad=1), "visual.bn2"))
        x = relu(self.bn(self.conv(x, "visual.conv3.weight", pad=1), "visual.bn3"))
        x = self.avgpool(x, 2)
        for stage, blocks in enumerate(v["layers"]):
            for i in range(blocks):
                p = f"visual.layer{stage + 1}.{i}"
                stride = 2 if stage > 0 and i == 0 else 1
                out = relu(self.bn(self.conv(x, p + ".conv1.weight"), p + ".bn1"))
                out = relu(self.bn(self.conv(out, p + ".conv2.weight", pad=1), p + ".bn2"))
                out = self.bn(self.conv(self.avgpool(out, stride), p + ".conv3.weight"), p + ".bn3")
                if p + ".downsample.0.weight" in self.sd:
                    x = self.bn(self.conv(self.avgpool(x, stride), p + ".downsample.0.weight"), p + ".downsample.1")
                x = relu(out + x)
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1).transpose(0, 2, 1)  # (N, HW, C)
        x = np.concatenate([x.mean(axis=1, keepdims=True), x], axis=1) + self.p("visual.attnpool.positional_embedding")
        q = self.linear(x[:, :1], "visual.attnpool.q_proj")
        k = self.linear(x, "visual.attnpool.k_proj")
        val = self.linear(x, "visual.attnpool.v_proj")
        heads = c // v.get("head_width", 64)
        return self.linear(self.mha(q, k, val, heads), "visual.attnpool.c_proj")[:, 0]

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """input_ids (N, L) int64 -> L2-normalised text embeddings (N, D), float64."""
        ids = np.asarray(ids)
        t = self.cfg["text_cfg"]
        eot = ids.argmax(axis=-1)
        # under the causal mask nothing after the end-of-text token reaches it: run only that far (the
        # graphs run all context_length tokens, so a leak through their mask shows up as a disagreement)
        length = int(eot.max()) + 1
        ids = ids[:, :length]
        x = np.asarray(self.sd["token_embedding.weight"][ids], dtype=np.float64)
        x = x + self.p("positional_embedding")[:length]
        mask = np.triu(np.full((length, length), -np.inf), 1)
        for i in range(t["layers"]):
            x = self.block(x, f"transformer.resblocks.{i}", t["heads"], mask)
        x = self.layer_norm(x, "ln_final")
        x = x[np.arange(len(ids)), eot]
        return self.normalize(x @ self.p("text_projection"))
