"""The core path on an accelerator, on a random-init model shaped like a 1B-8B Llama, in bf16.

One prepared script for a lent GPU (issues 16 and 28): no weights travel, the model is built on
the device. Shapes: Llama-3.2-1B (``1b``), Llama-2-7B (``7b``), Llama-3-8B (``8b``), ``tiny``.

1. **doctor**: bridge == HF logits (within the dtype's depth-scaled tolerance, reported with its
   rule), KV cache, hooks fire, RoPE verified.
2. **capture**: ``capture_stats`` vs a bare forward over B x T random tokens: time ratio, peak
   memory ratio (``_harness.peak_bytes``), tokens/s; then ``detect_massive`` and
   ``frequency_analysis`` on the result.
3. **evaluation** on ``kv_lookup`` (baseline, top-k massive, lowest-norm control):
   ``prefill_efficiency``, ``upstream_style_speedup`` and ``verdict_agreement`` as defined and
   measured by ``_harness.eval_ratios`` (shared with ``bench/eval_speed.py``).
4. **twins**: ``--twins-steps`` steps of the RoPE twin of the ``paper`` preset: step time and the
   projected time of the full preset (all variants, all steps).

``--size tiny --device cpu`` runs in seconds (the test suite runs it so it cannot rot). The last
line printed is one JSON object (also written to ``--out/gpu_check.json``).

    python bench/gpu_check.py --size 7b --device cuda --out $OUT
"""

from __future__ import annotations

import argparse
import json
import tempfile
import traceback
from pathlib import Path

import torch
from _harness import build_llama, eval_ratios, peak_bytes, timed

import massmech as mm
from massmech.causal.disruption import Disruption
from massmech.causal.tasks import get_task
from massmech.core.loading import resolve_dtype

SIZES = {
    # Llama-3.2-1B: 16 layers, d_model 2048, 32 heads, 8 KV heads, d_head 64, theta 500000
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64),
    # Llama-2-7B: 32 layers, d_model 4096, 32 heads, no grouped KV, d_head 128, theta 10000
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, head_dim=128),
    # Llama-3-8B: 32 layers, d_model 4096, 32 heads, 8 KV heads, d_head 128, theta 500000
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
}
ROPE = {"1b": (500_000.0, 8192), "7b": (10_000.0, 4096), "8b": (500_000.0, 8192), "tiny": (500_000.0, 8192)}
PLAN = {"1b": dict(batch=8, seq=4096, n=64, twins="paper"), "7b": dict(batch=8, seq=4096, n=64, twins="paper"),
        "8b": dict(batch=8, seq=4096, n=64, twins="paper"), "tiny": dict(batch=2, seq=64, n=4, twins="tiny")}


def build(size: str, device: str, dtype: torch.dtype):
    """A random-init Llama of that shape, built on the device in ``dtype``, and its tokenizer."""
    theta, positions = ROPE[size]
    return build_llama(SIZES[size], device, dtype, rope_theta=theta, max_positions=positions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="7b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--twins-steps", type=int, default=None, help="default: 100 (4 for tiny)")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json")
    ap.add_argument("--sections", default="doctor,capture,evaluation,twins", help="comma-separated subset to run")
    ap.add_argument("--n", type=int, default=None, help="kv_lookup examples (default: 64; 4 for tiny)")
    args = ap.parse_args()
    plan, dev = dict(PLAN[args.size]), args.device
    plan["n"] = args.n or plan["n"]
    sections = set(args.sections.split(","))
    dtype = resolve_dtype(args.dtype)
    result: dict = {"size": args.size, "device": dev, "dtype": args.dtype,
                    "gpu": torch.cuda.get_device_name() if dev.startswith("cuda") else None}

    t_build, (hf, tok) = timed(lambda: build(args.size, dev, dtype), dev)
    result["build_s"] = round(t_build, 1)

    from massmech.diagnostics.doctor import doctor

    if "doctor" in sections:
        verdict = doctor(hf, tok)  # the bridge wraps a copy; the untouched model is the reference
    lm = mm.wrap(hf, tok, name=f"llama3-{args.size}-shape")
    print(f"{lm!r} on {dev}, built in {t_build:.1f} s", flush=True)
    if "doctor" in sections:
        result["doctor"] = {"ok": verdict["ok"], "checks": verdict["checks"], "logit_diff": verdict["max_abs_logit_diff"],
                            "logit_tol": verdict["logit_tol"], "logit_tol_rule": verdict.get("logit_tol_rule"),
                            "device": verdict.get("device"), "dtype": verdict.get("dtype"),
                            "errors": verdict.get("errors", {})}
        print("doctor:", json.dumps(result["doctor"]), flush=True)

    _section("capture", sections, result, lambda: _capture(lm, plan, dev, result))
    _section("evaluation", sections, result, lambda: _evaluation(lm, plan, dev, result))
    del lm, hf
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    _section("twins", sections, result, lambda: _twins(args, plan, dev, result))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def _section(name: str, sections: set[str], result: dict, run) -> None:
    """Run one section if asked; on a lent device one run must say as much as it can: an error is
    recorded in the result and the next section still runs."""
    if name not in sections:
        return
    try:
        run()
    except Exception as err:  # noqa: BLE001
        result[name] = {"error": f"{type(err).__name__}: {err}"}
        traceback.print_exc()


def _capture(lm, plan: dict, dev: str, result: dict) -> None:
    ids = torch.randint(0, int(lm.bridge.cfg.d_vocab), (plan["batch"], plan["seq"]), device=dev,
                        generator=torch.Generator(dev).manual_seed(0))

    def bare():
        with torch.inference_mode():
            lm.bridge(ids, return_type=None)

    def capture():
        return mm.capture_stats(lm, ids, batch_size=plan["batch"], progress=False)

    bare()
    t_bare, _ = timed(bare, dev, repeats=3)
    t_cap, stats = timed(capture, dev, repeats=3)
    m_bare, m_cap = peak_bytes(bare, dev), peak_bytes(capture, dev)
    fa = mm.frequency_analysis(stats, context_len=plan["seq"])
    n_massive = len(mm.detect_massive(stats))
    result["capture"] = {
        "tokens": plan["batch"] * plan["seq"], "bare_s": round(t_bare, 3), "capture_s": round(t_cap, 3),
        "capture_time_ratio": round(t_cap / t_bare, 3), "tokens_per_s": round(plan["batch"] * plan["seq"] / t_cap),
        "peak_memory_ratio": round(m_cap / m_bare, 3) if m_bare else None, "massive_dims": n_massive,
        "k_post_low_band_energy": fa.summary["k.post"]["low_band_energy_fraction"],
    }
    print("capture:", json.dumps(result["capture"]), flush=True)


def _evaluation(lm, plan: dict, dev: str, result: dict) -> None:
    examples = get_task("kv_lookup").examples(plan["n"], seed=0)
    massive = Disruption(target="qk", stage="pre", rule="topk", k=4)
    conds = {"baseline": None, "massive": massive, "lowest": massive.as_control("lowest")}
    result["evaluation"] = eval_ratios(lm, examples, conds, batch_size=16, max_new_tokens=32, device=dev)
    print("evaluation:", json.dumps(result["evaluation"]), flush=True)


def _twins(args, plan: dict, dev: str, result: dict) -> None:
    from massmech.studies.twins.config import preset
    from massmech.studies.twins.train import prepare, train_variant

    steps = args.twins_steps or (4 if args.size == "tiny" else 100)
    full = preset(plan["twins"])
    cfg = full.replace(steps=steps, checkpoints=(steps,), warmup=min(full.warmup, steps))
    with tempfile.TemporaryDirectory() as tmp:
        t_prep, _ = timed(lambda: prepare(cfg, tmp), "cpu")  # tokenizer training and corpus: once per study
        t_train, _ = timed(lambda: train_variant(cfg, "rope", tmp, device=dev, progress=False), dev)
    step_s = t_train / steps  # includes building the model: a slight overestimate
    result["twins"] = {"preset": plan["twins"], "steps": steps, "step_s": round(step_s, 4), "prepare_s": round(t_prep, 1),
                       "projected_full_preset_h": round(step_s * full.steps * len(full.variants) / 3600, 2)}
    print("twins:", json.dumps(result["twins"]), flush=True)


if __name__ == "__main__":
    main()
