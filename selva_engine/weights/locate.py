"""Find and check SelVA weight files: where each file of a variant is, and whether it is sane.

Layout of a selva weights directory (ComfyUI `models/selva/`), per variant:

    <dir>/generator_<variant>_sup_5.pth          generator (flat state dict)
    <dir>/video_enc_sup_5.pth                    TextSynch (optional: not needed to train)
    <dir>/ext/v1-16.pth | ext/v1-44.pth          audio VAE of the mode (raw weights)
    <dir>/ext/best_netG.pt                       16 kHz vocoder, BigVGAN v1
    <dir>/ext/bigvgan_v2_44khz_128band_512x/     44.1 kHz vocoder: config.json + bigvgan_generator.pt
    <dir>/clip/                                  CLIP: open_clip_config.json + open_clip_pytorch_model.bin

Real variants also look in the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub): repos jnwnlee/SelVA, nvidia/bigvgan_v2_44khz_128band_512x and
apple/DFN5B-CLIP-ViT-H-14-384 (or -378). Tiny variants look only in the directory, so a
real cached model is never mixed with tiny weights. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from selva_engine.audio.bigvgan import BigVGAN, checkpoint_shapes
from selva_engine.audio.vae import VAE
from selva_engine.audio.vocoder import V1_16K_CONFIG, V2_44K_CONFIG, V2_FILES
from selva_engine.io import hf_hub_dir
from selva_engine.model.variants import Variant, get_variant
from selva_engine.text.clip import CONFIG_FILE, WEIGHT_FILES
from selva_engine.video.t5 import T5_REPO, T5Error, resolve_t5_dir, t5_candidates

__all__ = [
    "FileCheck", "MissingWeightsError", "TINY_V1_CONFIG", "TINY_V2_CONFIG", "VariantWeights",
    "check_variant", "fix_hint", "hf_hub_dir", "resolve",
]  # fmt: skip

V2_DIR = "bigvgan_v2_44khz_128band_512x"
MD5 = {  # published checksums (SelVA download table); the 44k generators have none
    "generator_small_16k_sup_5.pth": "1cb0f0deec52de37f67b1fd9965337d0",
    "video_enc_sup_5.pth": "ff09a6dc36148536ee4db97eba081d05",
    "v1-16.pth": "69f56803f59a549a1a507c93859fd4d7",
    "v1-44.pth": "fab020275fa44c6589820ce025191600",
    "best_netG.pt": "eeaf372a38a9c31c362120aba2dde292",
}
_HUB = "https://huggingface.co"
# Tiny vocoders: real mel widths and hops (256 / 512), a few channels.
TINY_V1_CONFIG = dict(V1_16K_CONFIG, upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8],
                      upsample_initial_channel=32, resblock_kernel_sizes=[3, 7],
                      resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]])
TINY_V2_CONFIG = {"resblock": "1", "num_mels": 128, "upsample_rates": [8, 8, 8],
                  "upsample_kernel_sizes": [16, 16, 16], "upsample_initial_channel": 32,
                  "resblock_kernel_sizes": [3, 7], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
                  "use_tanh_at_final": False, "use_bias_at_final": False, "activation": "snakebeta",
                  "snake_logscale": True, "n_fft": 2048, "hop_size": 512, "win_size": 2048,
                  "sampling_rate": 44100, "fmin": 0, "fmax": None}


class MissingWeightsError(FileNotFoundError):
    """Some file a variant needs is missing or wrong; `problems` lists the FileChecks."""

    def __init__(self, variant: str, problems: list[FileCheck], fix: str) -> None:
        self.variant, self.problems, self.fix = variant, problems, fix
        lines = [f"variant {variant!r} cannot run:"] + [f"  - {p.describe()}" for p in problems]
        super().__init__("\n".join(lines + [f"fix: {fix}"]))


@dataclass(frozen=True)
class FileCheck:
    """Outcome for one role: status is ok | missing | wrong_size | wrong_md5 | mismatch."""

    role: str  # generator, vae, vocoder, text_encoder, video_encoder
    status: str
    path: Path | None
    looked_in: tuple[Path, ...]
    detail: str = ""
    required: bool = True

    def describe(self) -> str:
        """One human-readable line naming the role, status, path and where we looked."""
        where = self.path or ", ".join(str(p) for p in self.looked_in)
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.role}: {self.status.replace('_', ' ')}: {where}{extra}"


@dataclass(frozen=True)
class VariantWeights:
    """Resolved weight locations of one variant (files; `vocoder`/`text_encoder` may be dirs)."""

    variant: str
    selva_dir: Path
    generator: Path
    vae: Path
    vocoder: Path  # best_netG.pt (bigvgan_v1) or a BigVGAN-v2 directory (bigvgan_v2)
    vocoder_kind: str
    text_encoder: Path  # directory with open_clip_config.json + weights
    video_encoder: Path | None = None


def _snapshots(repo: str) -> list[Path]:
    """Snapshot dirs of a cached hub repo, the one `refs/main` names first."""
    root = hf_hub_dir() / f"models--{repo.replace('/', '--')}"
    snaps = sorted((root / "snapshots").glob("*")) if (root / "snapshots").is_dir() else []
    main = root / "refs" / "main"
    if main.is_file():
        head = root / "snapshots" / main.read_text().strip()
        snaps = [head] + [s for s in snaps if s != head]
    return snaps or [root / "snapshots" / "<revision>"]


def _candidates(selva_dir: Path, variant: Variant, role: str) -> list[Path]:
    mode = variant.audio
    ext = selva_dir / "ext"
    gen = variant.generator_file
    if role == "generator":
        local = [selva_dir / gen, selva_dir / gen.replace("_44k_", "_44khz_")]
        hub = [s / "weights" / gen.replace("_44k_", "_44khz_") for s in _snapshots("jnwnlee/SelVA")]
    elif role == "vae":
        local = [ext / mode.vae_file]
        hub = [s / "ext_weights" / mode.vae_file for s in _snapshots("jnwnlee/SelVA")]
    elif role == "vocoder" and mode.vocoder == "bigvgan_v1":
        local = [ext / "best_netG.pt"]
        hub = [s / "ext_weights" / "best_netG.pt" for s in _snapshots("jnwnlee/SelVA")]
    elif role == "vocoder":
        local = [ext / V2_DIR]
        hub = _snapshots(f"nvidia/{V2_DIR}")
    elif role == "text_encoder":
        local = [selva_dir / "clip"]
        hub = _snapshots("apple/DFN5B-CLIP-ViT-H-14-384") + _snapshots("apple/DFN5B-CLIP-ViT-H-14-378")
    else:  # video_encoder
        local = [selva_dir / "video_enc_sup_5.pth"]
        hub = [s / "weights" / "video_enc_sup_5.pth" for s in _snapshots("jnwnlee/SelVA")]
    paths = local if variant.tiny else local + hub
    return list(dict.fromkeys(paths))  # unique, in order


def _present(path: Path, role: str, vocoder_kind: str) -> bool:
    if role == "text_encoder":
        return (path / CONFIG_FILE).is_file() and any((path / w).is_file() for w in WEIGHT_FILES)
    if role == "vocoder" and vocoder_kind == "bigvgan_v2":
        return all((path / f).is_file() for f in V2_FILES)
    return path.is_file()


def _numel(shapes: dict) -> tuple[int, int]:
    return sum(math.prod(s) for s in shapes.values()), len(shapes)


def _expected(variant: Variant, role: str, path: Path) -> tuple[int, int, float] | None:
    """(numel, entries, min bytes per value) of a role's state dict, or None if unknown."""
    if role == "generator":
        from selva_engine.model.generator import Generator  # lazy: large module

        with torch.device("meta"):
            sd = Generator(**variant.generator_kwargs()).state_dict()
        return (*_numel({k: v.shape for k, v in sd.items()}), 2.0)  # fp16/bf16 files allowed
    if role == "vae":
        m, e, d = variant.vae_dims
        with torch.device("meta"):
            sd = VAE(data_dim=m, embed_dim=e, hidden_dim=d).state_dict()
        return (*_numel({k: v.shape for k, v in sd.items()}), 4.0)
    if role == "vocoder":
        if variant.audio.vocoder == "bigvgan_v1":
            cfg = TINY_V1_CONFIG if variant.tiny else V1_16K_CONFIG
        else:
            cfg = json.loads((path / V2_FILES[0]).read_text(encoding="utf-8"))
            _check_v2_config(cfg, variant)
        with torch.device("meta"):
            return (*_numel(checkpoint_shapes(BigVGAN.from_config(cfg))), 4.0)
    return None


def _check_v2_config(cfg: dict, variant: Variant) -> None:
    hop = math.prod(cfg.get("upsample_rates", [0]))
    if cfg.get("num_mels") != variant.audio.n_mels or hop != variant.audio.hop:
        raise ValueError(f"config has {cfg.get('num_mels')} mels / hop {hop}, mode "
                         f"{variant.audio.name} needs {variant.audio.n_mels} / {variant.audio.hop}")
    model_keys = ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
                  "resblock_kernel_sizes", "use_tanh_at_final", "use_bias_at_final")
    real = all(cfg.get(k) == V2_44K_CONFIG[k] for k in model_keys)
    if real == variant.tiny:
        raise ValueError("a tiny BigVGAN-v2 config" if not real else "the real BigVGAN-v2 config"
                         + f" does not belong to variant {variant.name}")


def _file_of(path: Path, role: str, kind: str) -> Path:
    if role == "vocoder" and kind == "bigvgan_v2":
        return path / V2_FILES[1]
    if role == "text_encoder":
        return next(path / w for w in WEIGHT_FILES if (path / w).is_file())
    return path


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_role(selva_dir: Path, variant: Variant, role: str, md5: bool) -> FileCheck:
    kind = variant.audio.vocoder
    required = role != "video_encoder"
    looked = tuple(_candidates(selva_dir, variant, role))
    path = next((p for p in looked if _present(p, role, kind)), None)
    if path is None:
        detail = (f"for video extraction: {_HUB}/jnwnlee/SelVA weights/video_enc_sup_5.pth -> {selva_dir}/"
                  if role == "video_encoder" else "")
        return FileCheck(role, "missing", None, looked, detail, required=required)
    file = _file_of(path, role, kind)
    size = file.stat().st_size
    try:
        if role == "text_encoder":
            cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            width = cfg.get("model_cfg", cfg).get("text_cfg", {}).get("width")
            if width != variant.text_dim:
                return FileCheck(role, "mismatch", path, looked,
                                 f"text width {width}, variant needs {variant.text_dim}", required)
        expected = _expected(variant, role, path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return FileCheck(role, "mismatch", path, looked, f"config: {exc}", required)
    if expected is not None:
        numel, entries, min_bytes = expected
        lo, hi = numel * min_bytes * 0.99, numel * 4 * 1.02 + (1 << 20) + 2048 * entries
        if not lo <= size <= hi:
            return FileCheck(role, "wrong_size", path, looked,
                             f"{size:,} bytes, expected {int(lo):,}..{int(hi):,}: truncated or "
                             "another variant's file", required)
    if md5 and not variant.tiny and file.name in MD5 and _md5(file) != MD5[file.name]:
        return FileCheck(role, "wrong_md5", path, looked, f"md5 differs from {MD5[file.name]}", required)
    return FileCheck(role, "ok", path, looked, f"{size:,} bytes", required)


def check_variant(selva_dir: Path | str, variant: str, *, md5: bool = False) -> list[FileCheck]:
    """Check every file `variant` uses (size always; md5 only when asked: files are GBs)."""
    v = get_variant(variant)
    roles = ("generator", "vae", "vocoder", "text_encoder", "video_encoder")
    checks = [_check_role(Path(selva_dir), v, r, md5) for r in roles]
    return checks + [_check_t5(Path(selva_dir), v), _check_clip_vision(checks[3], v)]


def _check_t5(selva_dir: Path, variant: Variant) -> FileCheck:
    """FLAN-T5 (optional: only video extraction needs it)."""
    looked = tuple(t5_candidates(selva_dir)[:1] if variant.tiny else t5_candidates(selva_dir))
    for cand in looked:
        try:
            folder = resolve_t5_dir(cand)
        except T5Error:
            continue
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        has_tok = (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()
        if not has_tok or not any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
            return FileCheck("t5_encoder", "missing", folder, looked,
                             f"needs weights + tokenizer files; fetch {_HUB}/{T5_REPO}", False)
        return FileCheck("t5_encoder", "ok", folder, looked, f"d_model {cfg.get('d_model')}", False)
    return FileCheck("t5_encoder", "missing", None, looked,
                     f"for video extraction: {_HUB}/{T5_REPO} into the Hugging Face cache", False)


def _check_clip_vision(text: FileCheck, variant: Variant) -> FileCheck:
    """The CLIP image tower inside the open_clip checkpoint (optional, video extraction)."""
    if text.status != "ok" or text.path is None:
        return FileCheck("clip_vision", "missing", None, text.looked_in,
                         "the open_clip checkpoint holds it (see text_encoder)", False)
    cfg = json.loads((text.path / CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = cfg.get("model_cfg", cfg)
    if "vision_cfg" not in cfg or cfg.get("embed_dim") != variant.clip_dim:
        return FileCheck("clip_vision", "mismatch", text.path, text.looked_in,
                         f"image tower width {cfg.get('embed_dim')}, variant needs {variant.clip_dim}", False)
    return FileCheck("clip_vision", "ok", text.path, text.looked_in, f"embed_dim {variant.clip_dim}", False)


def fix_hint(selva_dir: Path, v: Variant) -> str:
    if v.tiny:
        return f"run `selva-weights make-tiny {selva_dir} --variant {v.name}`"
    vocoder = (f"{_HUB}/jnwnlee/SelVA ext_weights/best_netG.pt -> {selva_dir}/ext/"
               if v.audio.vocoder == "bigvgan_v1" else
               f"{_HUB}/nvidia/{V2_DIR} config.json + bigvgan_generator.pt -> {selva_dir}/ext/{V2_DIR}/")
    return (f"download from {_HUB}/jnwnlee/SelVA: weights/{v.generator_file.replace('_44k_', '_44khz_')}"
            f" -> {selva_dir}/{v.generator_file}, ext_weights/{v.audio.vae_file} -> {selva_dir}/ext/; "
            f"{vocoder}; {_HUB}/apple/DFN5B-CLIP-ViT-H-14-384 open_clip_config.json + "
            f"open_clip_pytorch_model.bin -> {selva_dir}/clip/ (e.g. `hf download REPO FILES "
            "--local-dir DIR`, on a machine with network access)")


def resolve(selva_dir: Path | str, variant: str, *, md5: bool = False) -> VariantWeights:
    """Resolved paths of every file `variant` needs, or MissingWeightsError naming the problems.

    Size sanity is always checked (md5 only with `md5=True`); the optional video encoder is
    reported in the result when present but never required.
    """
    selva_dir = Path(selva_dir)
    v = get_variant(variant)
    checks = {c.role: c for c in check_variant(selva_dir, variant, md5=md5)}
    bad = [c for c in checks.values() if c.required and c.status != "ok"]
    if bad:
        raise MissingWeightsError(variant, bad, fix_hint(selva_dir, v))
    video = checks["video_encoder"]
    return VariantWeights(
        variant=variant, selva_dir=selva_dir, generator=checks["generator"].path,
        vae=checks["vae"].path, vocoder=checks["vocoder"].path, vocoder_kind=v.audio.vocoder,
        text_encoder=checks["text_encoder"].path,
        video_encoder=video.path if video.status == "ok" else None,
    )

