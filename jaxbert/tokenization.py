"""BERT WordPiece tokenization (bert-base-uncased) on the Hugging Face `tokenizers` library.

The pipeline is assembled from a plain ``vocab.txt`` so that it matches
``transformers.BertTokenizerFast`` token for token without importing transformers
or torch at run time. Output is NumPy ``int32``, ready to hand to JAX.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BertTokenizer:
    """bert-base-uncased WordPiece tokenizer producing padded NumPy batches.

    Args:
        vocab_file: path to a BERT ``vocab.txt`` (one token per line, id = line number).
        lowercase: lowercase and strip accents before WordPiece (True for uncased
            checkpoints). Accent stripping follows ``lowercase``, as in original BERT.

    Raises:
        FileNotFoundError: ``vocab_file`` does not exist.
        ValueError: the vocabulary lacks one of ``[PAD] [UNK] [CLS] [SEP] [MASK]``.

    ``encode`` reconfigures truncation and padding on the shared Rust tokenizer,
    so one instance must not be used from several threads at once.
    """

    def __init__(self, vocab_file: str | os.PathLike, lowercase: bool = True) -> None:
        vocab_file = os.fspath(vocab_file)
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"BERT vocab file not found: {vocab_file}")
        vocab = models.WordPiece.read_file(vocab_file)
        missing = [t for t in _SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file} lacks special tokens {missing}")

        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None means "follow lowercase", which is what BERT's uncased models expect.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        tok.decoder = decoders.WordPiece(prefix="##")
        # Registering the specials keeps a literal "[MASK]" in raw text as one token
        # (as transformers does) and lets decode() skip them.
        tok.add_special_tokens(list(_SPECIAL_TOKENS))
        self._tok = tok
        self._ids = {t: vocab[t] for t in _SPECIAL_TOKENS}

    @classmethod
    def from_dir(cls, path: str | os.PathLike, lowercase: bool = True) -> BertTokenizer:
        """Build from ``path/vocab.txt`` (e.g. a downloaded checkpoint folder).

        Raises:
            FileNotFoundError: naming ``path/vocab.txt`` when it is absent.
        """
        return cls(os.path.join(os.fspath(path), "vocab.txt"), lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        """Number of ids (30522 for bert-base-uncased)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._ids["[PAD]"]

    @property
    def cls_id(self) -> int:
        return self._ids["[CLS]"]

    @property
    def sep_id(self) -> int:
        return self._ids["[SEP]"]

    @property
    def fingerprint(self) -> str:
        """A hash of everything that decides the ids (vocabulary, normalizer, templates), for cache keys.

        Truncation and padding are per-call settings that `encode` resets, so they are left out.
        """
        config = json.loads(self._tok.to_str())
        config.pop("truncation", None)
        config.pop("padding", None)
        return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def encode(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_length: int = 128,
        pad_to: int | None = None,
    ) -> dict[str, np.ndarray | int]:
        """Tokenize a batch of sentences (or sentence pairs) into padded id arrays.

        Sequences longer than ``max_length`` (special tokens included) are truncated;
        pairs lose tokens from whichever side is currently longer ("longest_first",
        transformers' default).

        Args:
            texts: ``batch`` first sentences.
            pairs: optional ``batch`` second sentences; they get ``token_type_ids`` 1.
            max_length: maximum tokens per row, including ``[CLS]``/``[SEP]``.
            pad_to: pad every row to exactly this length (fixed shapes avoid jit
                recompiles; must be ``>= max_length``). None pads to the longest row.

        Returns:
            ``input_ids``, ``attention_mask`` (1 = real token) and ``token_type_ids``:
            int32 arrays of shape ``[batch, seq]`` with ``seq = pad_to`` or the longest
            row; and ``num_truncated``: int, how many rows were cut to ``max_length``.

        Raises:
            TypeError: ``texts`` or ``pairs`` is a bare string.
            ValueError: lengths of ``texts`` and ``pairs`` differ, ``max_length`` cannot
                hold the special tokens, or ``pad_to < max_length``.
        """
        # A bare str is a Sequence[str] of characters; catching it saves a silent bug.
        if isinstance(texts, str) or isinstance(pairs, str):
            raise TypeError("texts and pairs must be sequences of strings, not a single str")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"texts and pairs differ in length: {len(texts)} texts vs {len(pairs)} pairs")
        n_special = 2 if pairs is None else 3
        if max_length < n_special:
            # tokenizers would silently emit rows longer than max_length here.
            raise ValueError(f"max_length={max_length} cannot hold the {n_special} special tokens")
        if pad_to is not None and pad_to < max_length:
            raise ValueError(f"pad_to={pad_to} is smaller than max_length={max_length}")

        self._tok.enable_truncation(max_length, strategy="longest_first")
        self._tok.enable_padding(pad_id=self.pad_id, pad_type_id=0, pad_token="[PAD]", length=pad_to)
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        encs = self._tok.encode_batch(inputs)

        # reshape keeps a 2-D [0, seq] shape for an empty batch.
        width = len(encs[0].ids) if encs else (pad_to or 0)

        def stack(field: str) -> np.ndarray:
            return np.array([getattr(e, field) for e in encs], dtype=np.int32).reshape(len(encs), width)

        return {
            "input_ids": stack("ids"),
            "attention_mask": stack("attention_mask"),
            "token_type_ids": stack("type_ids"),
            # With stride 0, tokenizers records the cut-off tail in `overflowing` only when it truncated.
            "num_truncated": sum(bool(e.overflowing) for e in encs),
        }

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Turn one row of ids back into text (``##`` pieces are glued to the previous word).

        Args:
            ids: 1-D ids, e.g. ``encode(...)["input_ids"][i]``; padding is dropped with
                the other special tokens when ``skip_special_tokens`` is True.

        Returns:
            The detokenized string (lowercased if the tokenizer lowercases).
        """
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
