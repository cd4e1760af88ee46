"""Tiny video encoders in the real file layouts (for the demo and the tests).

`write_tiny_video_encoders(selva_dir, variant)` writes `<dir>/t5/` (a `T5EncoderModel` in the
Hugging Face layout, `config.json` + `model.safetensors`, plus a tiny Unigram tokenizer built with
the `tokenizers` library and saved as `T5TokenizerFast` files) and `<dir>/video_enc_sup_5.pth`
(a TextSynch state dict: small depth and hidden widths, the variant's real `sync_dim`). The CLIP
image tower lives in the tiny open_clip checkpoint `make_tiny` writes (`clip_dim` wide).
Nothing is downloaded; everything is deterministic for `seed`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selva_engine.io import atomic_torch_save
from selva_engine.model.variants import Variant

__all__ = ["TINY_CLIP_VISION_CFG", "TINY_T5_DIM", "write_tiny_t5", "write_tiny_textsynch",
           "write_tiny_video_encoders"]

TINY_T5_DIM = 32
# Real input size and patch grid (384 px, 14 px patches), a token-sized transformer.
TINY_CLIP_VISION_CFG = {"image_size": 384, "layers": 1, "width": 32, "head_width": 16, "patch_size": 14}
_WORDS = ("a the of in on with and dog bark barking rain falling roof tin thunder engine footsteps "
          "gravel water wind car door bird sound distance fast slow loud soft metal wood glass").split()


def _tiny_tokenizer():
    """A Unigram tokenizer with flan-t5's special ids and the real file's pipeline structure."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -3.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    pieces += [(c, -6.0) for c in chars] + [("\u2581" + c, -6.5) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace("\u2581", prepend_scheme="always")])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = decoders.Metaspace("\u2581", prepend_scheme="always")
    return tok


def write_tiny_t5(directory: Path | str, *, d_model: int = TINY_T5_DIM, seed: int = 0) -> Path:
    """A tiny FLAN-T5-shaped encoder + tokenizer in the Hugging Face folder layout."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    directory = Path(directory)
    fast = T5TokenizerFast(tokenizer_object=_tiny_tokenizer(), extra_ids=100, model_max_length=512,
                           eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    vocab = -(-len(fast) // 8) * 8  # padded like flan-t5's 32100 -> 32128
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                   num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(cfg)
    from transformers.utils import logging as hf_logging

    tmp = directory.with_name(f".{directory.name}.tmp")
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(tmp))
    finally:
        hf_logging.enable_progress_bar()
    fast.save_pretrained(str(tmp))
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def write_tiny_textsynch(path: Path | str, *, sync_dim: int, text_dim: int = TINY_T5_DIM, seed: int = 0) -> Path:
    """A TextSynch checkpoint (flat bf16 state dict) of output width `sync_dim`, one block, 32 px patches."""
    from selva_engine.video.textsynch import TextSynch, TextSynchConfig

    heads = max(1, sync_dim // 64)
    cfg = TextSynchConfig(width=sync_dim, depth=1, heads=heads, patch=32, mlp=128, text_dim=text_dim,
                          swiglu=128, cross_depth=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TextSynch(cfg)
        sd = model.state_dict()
        for key in ("sup_text_feat", "empty_string_feat", "vfeat_extractor.cls_token",
                    "vfeat_extractor.pos_embed", "vfeat_extractor.temp_embed",
                    "vfeat_extractor.spatial_attn_agg.cls_token"):
            sd[key] = 0.02 * torch.randn(sd[key].shape)  # built as zeros
    # bf16 on disk halves the file (the real output width makes the patch convolutions large);
    # the loader reads any float dtype.
    sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    return atomic_torch_save(Path(path), sd)


def write_tiny_video_encoders(selva_dir: Path | str, variant: Variant, seed: int = 0) -> None:
    """T5 (`t5/`) and TextSynch (`video_enc_sup_5.pth`) for a tiny `variant`."""
    root = Path(selva_dir)
    write_tiny_t5(root / "t5", seed=seed + 10)
    write_tiny_textsynch(root / "video_enc_sup_5.pth", sync_dim=variant.sync_dim, seed=seed + 11)
