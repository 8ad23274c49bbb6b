"""The self-written CLIP tokenizer, the tiny text encoder and prompt encoding (unlearnctl/textenc.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unlearnctl.captions import CAPTION_TEMPLATES, caption_words, class_prompt, digit_captions
from unlearnctl.errors import BadInputError
from unlearnctl.textenc import (BOS_TOKEN, EOS_TOKEN, build_vocabulary, bytes_to_unicode, encode_prompts,
                                load_tokenizer, tiny_text_encoder, tiny_text_encoder_for, write_tokenizer)

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"), caption_words(DIGITS), max_length=16)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def content_tokens(tokenizer, text: str) -> list[str]:
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    return tokenizer.convert_ids_to_tokens(ids[1:-1])


def test_vocabulary_files_follow_clip(tokenizer_dir):
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version")
    chars = list(bytes_to_unicode().values())
    assert len(set(chars)) == 256
    assert [vocab[c] for c in chars] == list(range(256))
    assert [vocab[c + "</w>"] for c in chars] == list(range(256, 512))
    assert vocab[BOS_TOKEN] == len(vocab) - 2 and vocab[EOS_TOKEN] == len(vocab) - 1
    assert sorted(vocab.values()) == list(range(len(vocab)))
    for line in lines[1:]:
        left, right = line.split(" ")
        assert left in vocab and right in vocab and left + right in vocab, line


def test_tokenizer_loads_with_its_special_tokens(tokenizer, tokenizer_dir):
    assert tokenizer.model_max_length == 16
    assert tokenizer.convert_ids_to_tokens([tokenizer.bos_token_id, tokenizer.eos_token_id]) == [BOS_TOKEN, EOS_TOKEN]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.unk_token_id  # as in SD 1.x
    transformers = pytest.importorskip("transformers")
    fast = getattr(transformers, "CLIPTokenizerFast", None)
    if fast is not None:  # transformers 4 has a separate fast class; 5 makes it the same one
        other = fast.from_pretrained(str(tokenizer_dir), local_files_only=True)
        assert other(class_prompt("8")).input_ids == tokenizer(class_prompt("8")).input_ids


def test_every_caption_word_is_one_token(tokenizer):
    for word in caption_words(DIGITS):
        assert content_tokens(tokenizer, word) == [word + "</w>"], word
    for numeral in DIGITS:
        assert content_tokens(tokenizer, numeral) == [numeral + "</w>"]


def test_captions_round_trip_without_unknown_tokens(tokenizer):
    labels = np.arange(10).repeat(len(CAPTION_TEMPLATES))
    captions = set(digit_captions(labels, DIGITS, seed=0) + digit_captions(labels, DIGITS, seed=1))
    assert len(captions) > 40  # both seeds together cover most template × digit pairs
    for caption in captions:
        ids = tokenizer(caption).input_ids
        assert tokenizer.unk_token_id not in ids[1:-1], caption
        assert len(ids) <= tokenizer.model_max_length
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",") == caption


def test_text_outside_the_vocabulary_falls_back_to_bytes(tokenizer):
    text = "Ünïcode ✓ zebra-crossing 42"
    tokens = content_tokens(tokenizer, text)
    assert tokenizer.unk_token not in tokens
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == "ünïcode ✓ zebra - crossing 4 2"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interfering_words_still_become_one_token_each(tmp_path, seed):
    """Overlapping words (one's merges grab pairs another needs) still end as one token each."""
    rng = np.random.default_rng(seed)
    words = ["the", "then", "there", "he", "her", "here", "eth", "ether", "aaa", "aaaa"]
    words += ["".join(rng.choice(list("abcdeh"), size=rng.integers(2, 8))) for _ in range(40)]
    tokenizer = load_tokenizer(write_tokenizer(tmp_path, words))
    for word in words:
        assert content_tokens(tokenizer, word) == [word + "</w>"], word


def test_build_vocabulary_is_deterministic():
    assert build_vocabulary(["seven", "eight"]) == build_vocabulary(["eight", "seven", "eight"])


def test_missing_or_broken_tokenizer_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="holds no tokenizer"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(BadInputError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(BadInputError, match="max_length"):
        write_tokenizer(tmp_path / "x", ["a"], max_length=2)


def test_tiny_text_encoder_shape_ids_and_seed(tokenizer):
    encoder = tiny_text_encoder_for(tokenizer, seed=0)
    config = encoder.config
    assert (config.vocab_size, config.max_position_embeddings) == (len(tokenizer), tokenizer.model_max_length)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.no_grad():
        embeds = encode_prompts(tokenizer, encoder, [class_prompt("8"), "", "the number 3"])
    assert embeds.shape == (3, 16, 32) and torch.isfinite(embeds).all()
    assert not torch.allclose(embeds[0], embeds[1])
    same = tiny_text_encoder_for(tokenizer, seed=0)
    other = tiny_text_encoder_for(tokenizer, seed=1)
    weights = encoder.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in same.state_dict().items())
    assert not all(torch.equal(weights[k], v) for k, v in other.state_dict().items())
    with pytest.raises(BadInputError, match="divisible"):
        tiny_text_encoder(100, bos_token_id=98, eos_token_id=99, pad_token_id=99, hidden_size=30, num_heads=4)


def test_encode_prompts_equals_the_stable_diffusion_pipeline(tokenizer, tmp_path):
    """unlearnctl's prompt embeddings are the pipeline's, prompt and (empty) negative prompt alike."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from unlearnctl.autoencoder import tiny_autoencoder_config

    encoder = tiny_text_encoder_for(tokenizer, seed=3)
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**tiny_autoencoder_config()), text_encoder=encoder,
                                   tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    prompts = [class_prompt("8"), "a drawing of the number 3, small and zebra-like", "digit 0"]
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(prompts, "cpu", 1, True)
        ours = encode_prompts(tokenizer, encoder, prompts, "cpu")
        empty = encode_prompts(tokenizer, encoder, [""] * len(prompts), "cpu")
        _, given = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=["the number 8"] * 3)
        ours_given = encode_prompts(tokenizer, encoder, ["the number 8"] * 3, "cpu")
    assert (ours - positive).abs().max() <= 1e-6
    assert (empty - negative).abs().max() <= 1e-6
    assert (ours_given - given).abs().max() <= 1e-6
    pipe.save_pretrained(tmp_path / "pipe")  # the tokenizer and encoder survive a pipeline folder
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    assert reloaded.tokenizer.model_max_length == tokenizer.model_max_length
    with torch.no_grad():
        again, _ = reloaded.encode_prompt(prompts, "cpu", 1, False)
    assert (again - positive).abs().max() <= 1e-6
