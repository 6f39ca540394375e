"""Pluggable caption encoders: a small word-hash transformer trained with the model, or a pretrained
encoder from a local directory via transformers. Both map `list[str]` to `(B, L, text_dim)` hidden
states with padded positions zeroed (as Wan pads its T5 states) and a `(B, L)` bool mask.
"""
from __future__ import annotations

import math
import re
import zlib

import torch
from torch import nn

from policies.errors import PolicyError
from policies.world_model.configuration_world_model import WorldModelConfig

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
PAD, BOS = 0, 1


def _words(text: str) -> list[str]:
    """A caption's words and punctuation marks, lower-cased: what each token after BOS is."""
    return _WORD.findall(text.lower())


def hash_tokenize(captions: list[str], vocab_size: int, max_tokens: int) -> torch.Tensor:
    """Word-hash token ids `(B, max_tokens)`: BOS, crc32(word) buckets, 0-padded. No vocabulary file."""
    rows = []
    for text in captions:
        ids = [BOS] + [2 + zlib.crc32(w.encode()) % (vocab_size - 2) for w in _words(text)]
        rows.append(ids[:max_tokens])
    out = torch.full((len(rows), max_tokens), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


# periods (in the numbers' own units: cm, degrees) of the sinusoidal features a number word is read with
_NUMBER_PERIODS = (400.0, 200.0, 100.0, 50.0, 20.0, 10.0)
NUMBER_FEATURES = 1 + 2 * len(_NUMBER_PERIODS)


def number_features(captions: list[str], max_tokens: int) -> torch.Tensor:
    """`(B, max_tokens, NUMBER_FEATURES)` aligned with `hash_tokenize`'s ids: for each word that is a number its
    value / 100 and sin, cos of 2 pi value / period; zeros for every other position (BOS, words, padding)."""
    out = torch.zeros(len(captions), max_tokens, NUMBER_FEATURES)
    for i, text in enumerate(captions):
        for j, w in enumerate(_words(text)[: max_tokens - 1]):
            if w.isdigit():
                v = float(w)
                angles = [2 * math.pi * v / p for p in _NUMBER_PERIODS]
                out[i, j + 1] = torch.tensor([v / 100] + [f(a) for a in angles for f in (math.sin, math.cos)])
    return out


class SmallTextEncoder(nn.Module):
    """Word-hash embeddings + a small pre-norm transformer; needs no weights, trains with the model."""

    external = False

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.vocab_size, self.max_tokens, self.dim = cfg.text_vocab_size, cfg.max_text_tokens, cfg.text_dim
        self.tok = nn.Embedding(cfg.text_vocab_size, cfg.text_dim)
        self.pos = nn.Embedding(cfg.max_text_tokens, cfg.text_dim)
        layer = nn.TransformerEncoderLayer(
            cfg.text_dim, max(1, cfg.text_dim // 32), 4 * cfg.text_dim, dropout=0.0, batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)
        # `text_numbers`: a number word's value, as features, projected and added to its embedding
        self.numbers = nn.Linear(NUMBER_FEATURES, cfg.text_dim, bias=False) if cfg.text_numbers else None

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = hash_tokenize(captions, self.vocab_size, self.max_tokens).to(self.tok.weight.device)  # (B, L)
        mask = ids != PAD
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        if self.numbers is not None:
            h = h + self.numbers(number_features(captions, self.max_tokens).to(h.device))
        h = self.norm(self.layers(h, src_key_padding_mask=~mask))
        return h * mask.unsqueeze(-1), mask  # (B, L, D), (B, L)


class PretrainedTextEncoder(nn.Module):
    """A frozen transformers encoder (e.g. T5/UMT5 for Wan, or a BERT) from a local directory."""

    external = True

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        from pathlib import Path

        from transformers import AutoModel, AutoTokenizer

        path = cfg.text_encoder_path
        if not path or not Path(path).expanduser().is_dir():
            raise PolicyError(
                f"world_model.text_encoder=pretrained needs text_encoder_path to be a local directory, got {path!r}"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.requires_grad_(False).eval()
        hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
        if hidden != cfg.text_dim:
            raise PolicyError(f"world_model.text_dim={cfg.text_dim} but the encoder at {path} gives {hidden}")
        self.max_tokens, self.dim = cfg.max_text_tokens, cfg.text_dim

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: no dropout
        return self

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        mask = enc["attention_mask"].bool()
        h = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return h.float() * mask.unsqueeze(-1), mask


def make_text_encoder(cfg: WorldModelConfig) -> nn.Module:
    """Build the caption encoder named by `cfg.text_encoder`."""
    return SmallTextEncoder(cfg) if cfg.text_encoder == "small" else PretrainedTextEncoder(cfg)
