"""The text side of a latent text-to-image model: a CLIP tokenizer the tool writes itself, a tiny CLIP text
encoder, and prompt encoding exactly as diffusers' ``StableDiffusionPipeline.encode_prompt`` does it.

Nothing is downloaded. :func:`write_tokenizer` writes a byte-level BPE vocabulary in CLIP's format
(``vocab.json`` + ``merges.txt``, Radford et al. 2021; Sennrich et al. 2016) that
``transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)`` loads:

1. the 256 byte-level characters (GPT-2's ``bytes_to_unicode``) and the same 256 with CLIP's end-of-word
   suffix ``</w>`` — so any text tokenises, a letter at worst per token, and nothing is unknown;
2. for each caption word, a chain of merges that makes the word one token: ``e i → ei``, ``ei g → eig``, …,
   ``eigh t</w> → eight</w>``. Merges are ranked in the order written; a word's chain is built on top of how
   the merges written so far already split it, so later words never break up earlier ones;
3. ``<|startoftext|>`` and ``<|endoftext|>`` last (CLIP's ids 49406/49407 become ``len(vocab) - 2/-1``);
   ``<|endoftext|>`` is also the unknown and the padding token, as in Stable Diffusion 1.x.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from unlearnctl.errors import BadInputError, require

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
DEFAULT_MAX_LENGTH = 16  # tokens per prompt including <|startoftext|> and <|endoftext|>; SD uses 77
# CLIP's pre-tokenizer: a prompt splits into these pieces before BPE (transformers' CLIPTokenizer uses the same).
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's map from each byte to a printable character (printable bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = keep[:], 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def _pieces(text: str) -> list[str]:
    """``text`` as CLIP's tokenizer splits it before BPE: lower-cased, whitespace collapsed, then CLIP_PATTERN."""
    import regex

    return regex.findall(CLIP_PATTERN, " ".join(text.lower().split()))


def _symbols(piece: str) -> list[str]:
    """A piece's byte-level characters, the last one carrying ``</w>``."""
    table = bytes_to_unicode()
    chars = [table[b] for b in piece.encode("utf-8")]
    return chars[:-1] + [chars[-1] + END_OF_WORD]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly merge the adjacent pair of lowest rank (all its occurrences, left to right)."""
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_vocabulary(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-format vocabulary and ranked merges that make each piece of ``words`` one token (see the module doc)."""
    base = list(bytes_to_unicode().values())
    tokens = base + [char + END_OF_WORD for char in base]
    known = set(tokens)
    ranks: dict[tuple[str, str], int] = {}
    merges: list[tuple[str, str]] = []
    pieces = sorted({piece for word in words for piece in _pieces(word) if piece not in (BOS_TOKEN, EOS_TOKEN)})
    for piece in pieces:
        # Merges written after every existing one apply only once the existing ones are done, so chaining the
        # piece's current split left to right always ends in one token.
        current = _bpe(_symbols(piece), ranks)
        while len(current) > 1:
            pair = (current[0], current[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in known:
                known.add(pair[0] + pair[1])
                tokens.append(pair[0] + pair[1])
            current = _bpe(_symbols(piece), ranks)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_tokenizer(folder: str | Path, words: Sequence[str], *, max_length: int = DEFAULT_MAX_LENGTH) -> Path:
    """Write a CLIP tokenizer whose vocabulary makes each of ``words`` one token, into ``folder``.

    ``folder`` gets ``vocab.json``, ``merges.txt``, ``special_tokens_map.json`` and ``tokenizer_config.json`` —
    what ``transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)`` reads, and what a
    ``StableDiffusionPipeline`` folder holds under ``tokenizer/``.

    Args:
        folder: where to write (created if missing).
        words: the caption words (any text: it is split as CLIP splits it, e.g. :func:`unlearnctl.captions.caption_words`).
        max_length: ``model_max_length``: tokens per prompt with the start and end tokens (prompts are
            padded or truncated to it); the text encoder's ``max_position_embeddings`` must be at least this.
    """
    require(isinstance(max_length, int) and max_length >= 3, f"tokenizer max_length must be an integer >= 3, got {max_length!r}")
    require(all(isinstance(word, str) for word in words), "tokenizer words must be strings")
    vocab, merges = build_vocabulary(words)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": False, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def load_tokenizer(folder: str | Path):
    """``CLIPTokenizer.from_pretrained(folder, local_files_only=True)``; a folder without one is bad input."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    require((folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file(),
            f"{folder} holds no tokenizer (vocab.json + merges.txt, or tokenizer.json)")
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed vocab.json
        from unlearnctl.errors import cause_of

        raise BadInputError(f"cannot load the tokenizer in {folder}: {cause_of(exc)}") from None


def tiny_text_config(
    vocab_size: int,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    hidden_size: int = 32,  # width of every token's embedding (SD 1.x: 768)
    num_layers: int = 2,  # transformer layers (SD 1.x: 12)
    num_heads: int = 2,  # attention heads (SD 1.x: 12)
    intermediate_size: int = 64,  # MLP width (SD 1.x: 3072)
) -> dict[str, Any]:
    """The ``CLIPTextConfig`` arguments of the tiny text encoder (a plain dict, to record in a checkpoint)."""
    require(vocab_size > max(bos_token_id, eos_token_id, pad_token_id),
            f"vocab_size {vocab_size} must exceed the special token ids ({bos_token_id}, {eos_token_id}, {pad_token_id})")
    require(hidden_size % num_heads == 0, f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    return dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=max_length,
                hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=hidden_size,
                bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def tiny_text_encoder(vocab_size: int, *, seed: int = 0, **config: Any):
    """A randomly initialised ``transformers.CLIPTextModel`` (deterministic given ``seed``).

    ``config`` are :func:`tiny_text_config`'s keyword arguments (``bos_token_id``, ``eos_token_id`` and
    ``pad_token_id`` are required; :func:`tiny_text_encoder_for` takes them from a tokenizer).
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(**tiny_text_config(vocab_size, **config))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(text_config)
    return model.eval()


def tiny_text_encoder_for(tokenizer, *, seed: int = 0, **config: Any):
    """:func:`tiny_text_encoder` sized for ``tokenizer``: its vocabulary, max length and special token ids."""
    return tiny_text_encoder(len(tokenizer), seed=seed, max_length=tokenizer.model_max_length,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **config)


def tokenize_prompts(tokenizer, prompts: Sequence[str]):
    """Token ids ``[B, L]`` (``L = tokenizer.model_max_length``) and attention mask, padded as SD pads them."""
    require(all(isinstance(p, str) for p in prompts), "prompts must be strings")
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt")


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], device=None):
    """Prompt embeddings ``[B, L, D]``: ``StableDiffusionPipeline.encode_prompt``'s steps without clip skip,
    LoRA scale or textual inversion — tokenise padded to ``model_max_length`` with truncation, pass the
    attention mask only when the encoder's config sets ``use_attention_mask``, take ``last_hidden_state``
    (``text_encoder(...)[0]``) and cast it to the encoder's dtype. The empty prompt ``""`` gives the
    unconditional embedding of classifier-free guidance, as the pipeline does without a negative prompt.

    Gradients flow when the caller has them on (a method that trains the text encoder); wrap the call in
    ``torch.no_grad()`` otherwise.
    """
    device = device if device is not None else text_encoder.device
    inputs = tokenize_prompts(tokenizer, prompts)
    mask = inputs.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    embeds = text_encoder(inputs.input_ids.to(device), attention_mask=mask)[0]  # B×L×D
    return embeds.to(dtype=text_encoder.dtype, device=device)
