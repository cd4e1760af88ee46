"""FLAN-T5-base text encoder + tokenizer (transformers), loaded from local files only.

The directory is either a model folder (`config.json`, weights, tokenizer files) or a Hugging
Face cache repo folder `models--google--flan-t5-base` (its `refs/main` snapshot is used). The
prompt goes to the tokenizer unstripped, padded to the longest and truncated at the
tokenizer's `model_max_length` (512), exactly as SelVA's feature extractor calls it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from selva_engine.io import hf_hub_dir

__all__ = ["T5_REPO", "T5Encoder", "T5Error", "find_t5_dir", "resolve_t5_dir", "t5_candidates"]

T5_REPO = "google/flan-t5-base"


class T5Error(FileNotFoundError):
    """A T5 directory is missing or incomplete."""


def resolve_t5_dir(path: Path | str) -> Path:
    """The model folder inside `path` (itself, or the cache repo's `refs/main` snapshot)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    snaps = path / "snapshots"
    if snaps.is_dir():
        ref = path / "refs" / "main"
        if ref.is_file() and (snaps / ref.read_text().strip() / "config.json").is_file():
            return snaps / ref.read_text().strip()
        for snap in sorted(snaps.iterdir()):
            if (snap / "config.json").is_file():
                return snap
    raise T5Error(f"no T5 model in {path}: expected config.json + model weights + tokenizer files "
                  "(the Hugging Face google/flan-t5-base snapshot); fetch it with "
                  "`hf download google/flan-t5-base` on a machine with network access")


def t5_candidates(selva_dir: Path | str) -> list[Path]:
    """Where FLAN-T5-base is looked for: `<selva_dir>/t5/`, then the Hugging Face cache."""
    return [Path(selva_dir) / "t5", hf_hub_dir() / f"models--{T5_REPO.replace('/', '--')}"]


def find_t5_dir(selva_dir: Path | str) -> Path:
    """The first T5 model folder of `t5_candidates`, or FileNotFoundError naming the fix."""
    looked = t5_candidates(selva_dir)
    for cand in looked:
        try:
            return resolve_t5_dir(cand)
        except T5Error:
            continue
    raise T5Error(f"FLAN-T5 not found (looked in {', '.join(map(str, looked))}); fetch "
                  f"https://huggingface.co/{T5_REPO} (config.json, model.safetensors, tokenizer files) "
                  f"into the Hugging Face cache, e.g. `hf download {T5_REPO}` on a machine with network access")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off while loading, restored after."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # decoder weights of a full T5 checkpoint are expected extras
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _load_tokenizer(directory: Path):
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(directory), local_files_only=True)


class T5Encoder:
    """Tokenizer + `T5EncoderModel`: `encode(prompts) -> (last_hidden_state, bool mask)`."""

    def __init__(self, directory: Path | str, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        from transformers import T5EncoderModel

        self.directory = resolve_t5_dir(directory)
        with _quiet_transformers():
            try:
                self.tokenizer = _load_tokenizer(self.directory)
                self.model = T5EncoderModel.from_pretrained(
                    str(self.directory), local_files_only=True, dtype=dtype).to(device).eval()
            except OSError as exc:
                raise T5Error(f"{self.directory}: cannot load T5 ({exc}); re-download google/flan-t5-base") from None
        self.model.requires_grad_(False)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer_dir: Path | str, *,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> T5Encoder:
        """A T5Encoder over an already-built `T5EncoderModel` (moved to `device`/`dtype`, eval,
        frozen) and the tokenizer files in `tokenizer_dir` (`directory` is that folder)."""
        self = cls.__new__(cls)
        self.directory = Path(tokenizer_dir)
        with _quiet_transformers():
            try:
                self.tokenizer = _load_tokenizer(self.directory)
            except OSError as exc:
                raise T5Error(f"{self.directory}: cannot load the T5 tokenizer ({exc})") from None
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return self

    def weights_file(self) -> Path:
        """The weight file the model came from (for fingerprints)."""
        for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
            if (self.directory / name).is_file():
                return self.directory / name
        return self.directory / "config.json"

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) int64 (B, L), padded to the longest, truncated at 512."""
        tok = self.tokenizer(list(prompts), max_length=self.tokenizer.model_max_length,
                             padding=True, truncation=True, return_tensors="pt")
        return tok["input_ids"], tok["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last_hidden_state (B, L, d_model) in the model dtype, mask (B, L) bool)."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        ids, mask = self.tokenize(prompts)
        device = self.model.device
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        return out, mask.to(device) == 1
