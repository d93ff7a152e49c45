"""Training the twins: one config, one seed, resumable checkpoints.

Layout of a twins folder::

    OUT/config.json                          the TwinsConfig (a resume must match it)
    OUT/tokenizer/                           byte-level BPE trained on the training articles
    OUT/checkpoints/VARIANT/step_000100/     HF model (save_pretrained) + trainer.pt + manifest.json

A checkpoint folder is written to a temporary name and renamed when complete, so a killed run
resumes from its last complete checkpoint; batches are a function of (seed, step), the learning
rate a function of the step, and each run trains on one CPU thread, so the resumed trajectory
equals the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from massmech.core.decoder import lm_logits
from massmech.core.twin import (
    TwinLlamaForCausalLM,
    build_twin,
    initial_weights,
    load_tokenizer,
    load_twin,
    save_twin,
    twin_config,
)
from massmech.errors import CorpusError, TwinError
from massmech.files.io import write_json
from massmech.files.provenance import manifest
from massmech.files.runs import check_out, open_study_dir
from massmech.studies.twins.config import TWINS, TwinsConfig, Variant
from massmech.studies.twins.data import (
    TwinCorpus,
    batch,
    load_corpus,
    train_tokenizer,
)


# --------------------------------------------------------------------------- folder
def _step_dir(out: Path, v: Variant, step: int) -> Path:
    return out / "checkpoints" / v.name / f"step_{step:06d}"


def checkpoint_dirs(out: str | os.PathLike, v: Variant) -> dict[int, Path]:
    """Complete checkpoints of a variant: step -> folder."""
    root = Path(out) / "checkpoints" / v.name
    found = {}
    for d in sorted(root.glob("step_*")) if root.is_dir() else []:
        if d.is_dir() and (d / "trainer.pt").is_file() and d.name[5:].isdigit():
            found[int(d.name[5:])] = d
    return found


#: what a twins folder holds besides its manifest, all written by massmech (``overwrite`` removes exactly these)
TWINS_ENTRIES = ("config.json", "tokenizer", "checkpoints", "cells", "analysis")


def prepare(cfg: TwinsConfig, out: str | os.PathLike, *, overwrite: bool = False) -> tuple[Any, TwinCorpus]:
    """Create or reopen a twins folder: check the config, train or load the tokenizer, tokenize.

    Args:
        overwrite: A folder of twins trained with another config is emptied of what massmech
            wrote there (:data:`TWINS_ENTRIES`) and trained anew; without it, it is refused.

    Raises:
        TwinError: ``out`` holds a twins run with a different config (and not ``overwrite``).
        CorpusError: The corpus holds too few tokens for the requested training.
    """
    out = check_out(out, "twins", resume=True)  # never a folder massmech did not write
    saved = out / "config.json"
    if saved.is_file():
        old = TwinsConfig.from_dict(json.loads(saved.read_text()))
        if old != cfg:
            diff = [f.name for f in dataclasses.fields(cfg) if getattr(old, f.name) != getattr(cfg, f.name)]
            if not overwrite:
                raise TwinError(
                    f"{out} holds twins trained with a different config (differs in {diff}); resume with the "
                    "same config, pass --overwrite (overwrite=True) to replace them, or choose another --out"
                )
            for name in TWINS_ENTRIES:
                entry = out / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.exists() or entry.is_symlink():
                    entry.unlink()
    tok_dir = out / "tokenizer"
    fresh = not (tok_dir / "tokenizer.json").is_file()
    if fresh:  # trained outside OUT: nothing is created there until the checks pass
        tmp = Path(tempfile.mkdtemp(prefix="massmech-twin-tok-"))
        train_tokenizer(cfg.vocab_size, tmp, seed=cfg.seed, heldout_fraction=cfg.heldout_fraction)
    # Always from disk: the bridge re-opens a tokenizer by its path.
    tok = load_tokenizer(tmp if fresh else tok_dir)
    corpus = load_corpus(tok, seed=cfg.seed, heldout_fraction=cfg.heldout_fraction, alphabet=cfg.alphabet)
    need = cfg.steps * cfg.batch_size * (cfg.context + 1) * (1 - cfg.synthetic_share)
    have = len(corpus.train) * cfg.max_epochs
    if need > have:
        if fresh:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CorpusError(
            f"{cfg.steps} steps of {cfg.batch_size} x {cfg.context} tokens draw about {need:,.0f} natural-text "
            f"tokens, more than max_epochs={cfg.max_epochs:g} passes over the {len(corpus.train):,} training "
            "tokens: lower steps/batch_size or raise max_epochs"
        )
    open_study_dir(out, "twins")
    if fresh:
        shutil.copytree(tmp, tok_dir, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tok = load_tokenizer(tok_dir)
    if not saved.is_file():
        write_json(saved, cfg.to_dict())
    return tok, corpus


def hf_config(cfg: TwinsConfig, v: Variant, corpus: TwinCorpus):
    return twin_config(
        v.mechanism,
        vocab_size=corpus.vocab_size,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        max_positions=cfg.max_context,
        rope_theta=cfg.theta_of(v),
        special_ids={"pad": corpus.special["<pad>"], "bos": corpus.special["<bos>"], "eos": corpus.special["<eos>"]},
    )


def load_checkpoint(out: str | os.PathLike, variant: str | Variant, step: int | None = None) -> TwinLlamaForCausalLM:
    """A trained twin (``step=None``: its last checkpoint), in eval mode."""
    cfg = TwinsConfig.from_dict(json.loads((Path(out) / "config.json").read_text()))
    v = cfg.variant(variant) if isinstance(variant, str) else variant
    dirs = checkpoint_dirs(out, v)
    if not dirs:
        raise TwinError(f"{out} has no checkpoint of {v.name}: train it first (massmech twins)")
    step = max(dirs) if step is None else step
    if step not in dirs:
        raise TwinError(f"{v.name} has checkpoints at steps {sorted(dirs)}, not {step}")
    return load_twin(dirs[step])


# --------------------------------------------------------------------------- training
def resolve_device(device: str | None) -> str:
    """``device``, or CUDA when available and the CPU otherwise."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TwinError(f"device {device!r} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def learning_rate(cfg: TwinsConfig, step: int) -> float:
    """Learning rate of update ``step`` (1-based): linear warm-up, cosine decay to the floor."""
    if step <= cfg.warmup:
        return cfg.lr * step / max(cfg.warmup, 1)
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _save(out: Path, cfg: TwinsConfig, v: Variant, model, opt, step: int, log: list) -> None:
    final = _step_dir(out, v, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_twin(model, tmp)
    write_json(tmp / "manifest.json", manifest(cfg, model_info={"variant": v.name, "step": step}, seed=cfg.seed))
    torch.save({"step": step, "optimizer": opt.state_dict(), "log": log}, tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def autocast(precision: str, device: str) -> Any:
    """The training forward's arithmetic (see ``TwinsConfig.precision``): a bf16 autocast or nothing.

    >>> type(autocast("auto", "cpu")).__name__
    'nullcontext'
    >>> autocast("bf16", "cpu").fast_dtype
    torch.bfloat16
    """
    kind = torch.device(device).type
    if precision == "bf16" or (precision == "auto" and kind == "cuda"):
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_variant(
    cfg: TwinsConfig,
    variant: Variant | str,
    out: str | os.PathLike,
    *,
    stop_at: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train one variant from its last checkpoint (or from the shared init) to ``cfg.steps``.

    Args:
        cfg: The study config.
        variant: The run.
        out: The twins folder.
        stop_at: Stop after this step (to test or split resumption); default ``cfg.steps``.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available. On the CPU training runs on
            one thread and resumes bit for bit; on a GPU only up to its kernels' determinism.
        progress: Show a progress bar.

    Returns:
        The training log: one ``{"step", "loss", "lr"}`` per update so far.
    """
    out = Path(out)
    v = cfg.variant(variant) if isinstance(variant, str) else variant
    tok, corpus = prepare(cfg, out)
    hcfg = hf_config(cfg, v, corpus)
    done = checkpoint_dirs(out, v)
    device = resolve_device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in every run, parallel or not: resumable bit for bit
    try:
        if done:
            start = max(done)
            model = load_twin(done[start])
            state = torch.load(done[start] / "trainer.pt", weights_only=True)
            log = list(state["log"])
        else:
            start = 0
            seed = cfg.seed_of(v)  # the twins of one seed share their initial weights
            model = build_twin(hcfg, initial_weights(hf_config(cfg, TWINS[0], corpus), seed), seed + 1)
            state, log = None, []
        model.to(device).train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.95),
        )
        if state is not None:
            opt.load_state_dict(state["optimizer"])
        if start == 0 and 0 in cfg.checkpoints:
            _save(out, cfg, v, model, opt, 0, log)
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        ctx, rows = cfg.context_of(v), cfg.batch_of(v)
        bar = tqdm(range(start + 1, end + 1), desc=f"train {v.name}", disable=not progress, leave=False)
        for step in bar:
            x = batch(corpus, seed=cfg.seed_of(v), step=step, batch_size=rows, length=ctx + 1,
                      synthetic_share=cfg.synthetic_share, kinds=cfg.kinds).to(device)  # [rows, ctx + 1]
            with autocast(cfg.precision, device):
                logits = lm_logits(model, x[:, :-1])  # [rows, ctx, vocab]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
            if not torch.isfinite(loss):
                raise TwinError(f"{v.name}: loss is {loss.item()} at step {step}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = learning_rate(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            value = loss.item()
            log.append({"step": step, "loss": value, "lr": lr})
            bar.set_postfix(loss=f"{value:.3f}")
            if step in cfg.checkpoints:
                _save(out, cfg, v, model, opt, step, log)
        return log
    finally:
        torch.set_num_threads(threads)


def read_log(out: str | os.PathLike, v: Variant) -> list[dict]:
    """The training log saved with a variant's last checkpoint."""
    dirs = checkpoint_dirs(out, v)
    if not dirs:
        raise TwinError(f"{out} has no checkpoint of {v.name}")
    return list(torch.load(dirs[max(dirs)] / "trainer.pt", weights_only=True)["log"])


def log_table(logs: dict[str, list[dict]]):
    """Tidy training log: one row per (variant, step)."""
    import pandas as pd

    return pd.DataFrame([{"variant": n, **row} for n, log in logs.items() for row in log])
