"""CLIP byte-level BPE tokenizer without torch, id-for-id equal to ``open_clip.get_tokenizer(arch)``
for the CLIP models RemoteCLIP uses (clean "lower": ftfy, html unescape twice, whitespace
collapsed, lower case; start 49406, end 49407, zero padding, truncation keeps the end token).

Why not a library: HF ``tokenizers`` (0.23.3, tried with CLIP's vocabulary, merges, pattern and
normaliser) skips ftfy and html unescaping, and splits differently around the special-token
strings: on the 10,000 test strings 4,278 differ on raw text, 194 still differ after cleaning
with ftfy + html in Python and registering the special tokens. It would also be one more
compiled wheel for QGIS users. So this is the published CLIP algorithm on ftfy + regex, checked
against open_clip on 10,000+ strings in tests/test_tokenizer.py.

Command line (one JSON string per line in, one JSON list of ids per line out)::

    python -m core.runtime.tokenizer --model BUNDLE < texts.jsonl
"""

from __future__ import annotations

import gzip
import html
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InvalidInput, ModelError, RemoteClipError

# open_clip reads exactly these merges out of bpe_simple_vocab_16e6.txt.gz
_N_MERGES = 49152 - 256 - 2
_SPECIAL = ("<start_of_text>", "<end_of_text>")


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (the reversible byte-level alphabet of GPT-2/CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _basic_clean(text: str) -> str:
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def _clean_lower(text: str) -> str:
    return " ".join(_basic_clean(text).split()).strip().lower()


def _clean_whitespace(text: str) -> str:
    return " ".join(_basic_clean(text).split()).strip()


class Tokenizer:
    """Tokenize text for a bundle's text graph: ``tok(["a photo of a river"]) -> int64 (N, context_length)``."""

    def __init__(self, vocab_file, context_length: int = 77, sot_token_id: int | None = None,
                 eot_token_id: int | None = None, pad_token_id: int = 0, lowercase: bool = True):
        import regex

        vocab_file = Path(vocab_file)
        try:
            with gzip.open(vocab_file) as f:
                lines = f.read().decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ModelError(f"Cannot read the tokenizer vocabulary {vocab_file} ({e}).",
                                  "Re-export the model bundle; its bpe_simple_vocab_16e6.txt.gz is damaged.", path=vocab_file) from e
        merges = [tuple(m.split()) for m in lines[1:_N_MERGES + 1]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise ModelError(f"{vocab_file} is not the CLIP BPE merges file ({len(merges)} merges).",
                                  "Re-export the model bundle with `python -m training.export`.", path=vocab_file)
        self.byte_encoder = _bytes_to_unicode()
        alphabet = list(self.byte_encoder.values())
        vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + list(_SPECIAL)
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.vocab_size = len(vocab)
        self.sot_token_id = self.encoder[_SPECIAL[0]] if sot_token_id is None else int(sot_token_id)
        self.eot_token_id = self.encoder[_SPECIAL[1]] if eot_token_id is None else int(eot_token_id)
        self.pad_token_id = int(pad_token_id)
        self.context_length = int(context_length)
        self._clean = _clean_lower if lowercase else _clean_whitespace
        # open_clip matches the special-token strings inside user text too; do the same
        self._pat = regex.compile(
            "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._cache: dict[str, tuple[int, ...]] = {t: (self.encoder[t],) for t in _SPECIAL}

    @classmethod
    def from_bundle(cls, bundle) -> Tokenizer:
        from .bundle import load_bundle

        bundle = load_bundle(bundle)
        t = bundle.text
        if t.get("tokenizer", "clip-bpe") != "clip-bpe":
            raise ModelError(f"Bundle {bundle.name} uses tokenizer {t.get('tokenizer')!r}; "
                                  "this version only reads 'clip-bpe'.", "Use a CLIP-BPE bundle or update the plugin.")
        return cls(bundle.vocab_path, context_length=t["context_length"], sot_token_id=t.get("sot_token_id"),
                   eot_token_id=t.get("eot_token_id"), pad_token_id=t.get("pad_token_id", 0),
                   lowercase=t.get("lowercase", True))

    def _bpe(self, token: str) -> tuple[int, ...]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(word) > 1:
            # lowest-rank adjacent pair is merged first, everywhere it occurs
            best = None
            best_rank = None
            for pair in zip(word, word[1:], strict=False):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            first, second = best
            merged = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = tuple(self.encoder[w] for w in word)
        if len(self._cache) < 100_000:
            self._cache[token] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of one string, without start/end tokens or padding."""
        ids: list[int] = []
        for token in self._pat.findall(self._clean(text)):
            # special-token strings are ASCII, so byte-encoding keeps them and _bpe's cache maps them
            ids.extend(self._bpe("".join(self.byte_encoder[b] for b in token.encode("utf-8"))))
        return ids

    def decode(self, ids) -> str:
        byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        skip = {self.pad_token_id, self.sot_token_id, self.eot_token_id}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in skip)
        text = text.replace("</w>", " ")
        return bytearray(byte_decoder.get(c, 32) for c in text).decode("utf-8", errors="replace").strip()

    def encode_with_info(self, texts) -> tuple[np.ndarray, list[bool]]:
        """Ids (N, context_length) int64 and, per text, whether it was cut to fit the context."""
        if isinstance(texts, str):
            texts = [texts]
        n = self.context_length
        out = np.full((len(texts), n), self.pad_token_id, dtype=np.int64)
        truncated = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"Text #{i} is a {type(text).__name__}, not a string.",
                                      "Pass prompts as strings.")
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            cut = len(ids) > n
            if cut:
                ids = ids[:n]
                ids[-1] = self.eot_token_id
            out[i, :len(ids)] = ids
            truncated.append(cut)
        return out, truncated

    def __call__(self, texts) -> np.ndarray:
        return self.encode_with_info(texts)[0]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m core.runtime.tokenizer",
                                 description="CLIP BPE token ids: one JSON string per line on stdin, "
                                             "one JSON list of ids per line on stdout.")
    ap.add_argument("--model", required=True, help="bundle folder or .zip")
    ap.add_argument("--trim", action="store_true", help="drop the zero padding from each list")
    args = ap.parse_args(argv)
    try:
        tok = Tokenizer.from_bundle(args.model)
    except RemoteClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)
        except ValueError as e:
            print(f"error: line {lineno} is not JSON ({e}); write one JSON string per line, e.g. \"a river\"",
                  file=sys.stderr)
            return 2
        if not isinstance(text, str):
            print(f"error: line {lineno} holds a {type(text).__name__}, not a JSON string", file=sys.stderr)
            return 2
        ids = tok([text])[0].tolist()
        if args.trim:
            while ids and ids[-1] == tok.pad_token_id:
                ids.pop()
        sys.stdout.write(json.dumps(ids) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
