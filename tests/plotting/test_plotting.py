import pytest
import torch

import massmech as mm
from massmech import plotting


@pytest.fixture(scope="module")
def tiny_analysis(tiny_models):
    model = tiny_models["tiny-qwen2"]
    stats = mm.capture_stats(model, ["figures need some text to look at " * 4] * 3, progress=False)
    return model, stats, mm.frequency_analysis(stats)


def _written(out):
    for ext in ("pdf", "png"):
        path = out.with_suffix(f".{ext}")
        assert path.stat().st_size > 1000, path
    pdf = out.with_suffix(".pdf").read_bytes()
    assert b"/Type3" not in pdf and b"/FontType 3" not in pdf  # Type 42 (TrueType) fonts only


def test_heatmap(tiny_analysis, tmp_path):
    _, stats, _ = tiny_analysis
    fig = plotting.massive_heatmap(stats, [0, 1], out=tmp_path / "h")
    _written(tmp_path / "h")
    assert len(fig.axes) == 2 * 2 * 2  # 2 sites x 2 layers, each with a colorbar
    assert fig.axes[0].get_xlabel() == "dim" and fig.axes[0].get_ylabel() == "head"
    with pytest.raises(IndexError, match="not captured"):
        plotting.massive_heatmap(stats, [5])


def test_bars3d(tiny_analysis, tmp_path):
    model, _, _ = tiny_analysis
    acts = model.run_sites(model.probe_tokens(6), [("q", "pre")], layers=[0])
    fig = plotting.token_dim_bars({"Q": acts[("q", "pre", 0)][0, :, 0]}, out=tmp_path / "b")
    _written(tmp_path / "b")
    assert fig.axes[0].get_zlabel() == "|value|"


def test_emergence_and_spectrum(tiny_analysis, tmp_path):
    _, _, fa = tiny_analysis
    fig = plotting.emergence(fa, out=tmp_path / "e")
    _written(tmp_path / "e")
    assert fig.axes[0].get_ylabel() == "energy fraction in low band"
    fig = plotting.spectrum(fa, [0, 1], out=tmp_path / "s")
    _written(tmp_path / "s")
    assert [ax.get_xscale() for ax in fig.axes] == ["log"] * 3
    with pytest.raises(IndexError):
        plotting.spectrum(fa, [9])


def test_figures_without_out_write_nothing(tiny_analysis, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = plotting.emergence(tiny_analysis[2])
    assert list(tmp_path.iterdir()) == []
    assert len(fig.axes) == 2


def test_heatmap_band_edges_adjacent_layout(tmp_path):
    from massmech.core.rope import RopeSpec

    spec = RopeSpec(d_head=12, rotary_dim=12, layout="adjacent", inv_freq=(tuple(10.0 ** -i for i in range(6)),), scaling=(1.0,))
    m = torch.ones(1, 2, 12, dtype=torch.float64)
    stats = mm.QKVStats(model="adj", layers=(0,), n_tokens=1, n_sequences=1, sumsq={("q", "pre"): m},
                        total={("q", "pre"): m}, max_abs={("q", "pre"): m}, rope=spec)
    fig = plotting.massive_heatmap(stats, [0], sites=("q",), n_bands=3)
    xs = sorted(line.get_xdata()[0] for line in fig.axes[0].get_lines())
    assert xs == [3.5, 7.5]  # pairs (4,5) and (8,9) start the mid and low bands


def test_ablation_figures(tmp_path):
    from massmech import plotting
    from massmech.studies.ablation import SweepConfig, run_sweep

    cfg = SweepConfig(models=("tiny-llama",), tasks=("country_capital", "kv_lookup"), n=4, rules=("topk",),
                      ks=(1, 2), layer_ranges=("all", "early", "late"), controls=("lowest",))
    table = run_sweep(cfg, tmp_path / "sweep", progress=False)
    main = table[(table.layer_range == "all") & (table.k == 1) | (table.role == "baseline")]
    plotting.ablation_bars(main, out=tmp_path / "bars")
    plotting.ablation_curve(table[(table.layer_range == "all") | (table.role == "baseline")], out=tmp_path / "curve")
    fig = plotting.ablation_layers(table[(table.k == 2) | (table.role == "baseline")], out=tmp_path / "layers")
    for name in ("bars", "curve", "layers"):
        assert (tmp_path / f"{name}.pdf").stat().st_size > 1000 and (tmp_path / f"{name}.png").exists()
    assert len(fig.axes) == 2
    import pytest

    with pytest.raises(ValueError, match="not in the table"):
        plotting.ablation_bars(main, model="other")
    plotting.close_all()


def test_pairs_effect_figure_draws_both_granularities_beside_their_kl_controls(tmp_path):
    """Issue 27, part 4: pair vs coordinate bars with intervals, from a real (tiny) pairs-effect sweep."""
    import pytest

    from massmech import plotting
    from massmech.errors import AnalysisError
    from massmech.studies.ablation import preset, run_sweep

    table = run_sweep(preset("pairs-effect", models=("tiny-llama",), n=4, ks=(1,), tasks=("kv_lookup",)),
                      tmp_path / "sweep", progress=False)
    fig = plotting.pairs_effect(table, out=tmp_path / "pairs")
    assert (tmp_path / "pairs.pdf").stat().st_size > 1000 and (tmp_path / "pairs.png").exists()
    ax = fig.axes[0]
    assert len(ax.patches) == 4 and "KL" in ax.get_xticklabels()[0].get_text()  # 2 granularities x (massive, KL control)
    with pytest.raises(AnalysisError, match="pairs-effect"):
        plotting.pairs_effect(table[table.control != "kl"])  # no KL-matched controls: refused, not drawn half
    plotting.close_all()


def test_the_qk_figure_draws_the_mean_over_roundings_by_part(tmp_path):
    import pandas as pd

    from massmech import plotting

    rows = [("none", "none", "qk", "all", 0, 0.9)]
    rows += [(f"{m}-{p}-d{d}", m, s, lay, d, v) for m, s, lay, p, vals in (
        ("qk-rtn", "qk", "all", "a", (0.5, 0.2, 0.4)), ("qk-rtn-keep-massive", "qk", "all", "a", (0.7, 0.6, 0.8)),
        ("qk-rtn-keep-random", "qk", "all", "a", (0.3, 0.1, 0.3)), ("qk-rtn", "k", "all", "k", (0.6,)),
        ("qk-rtn-keep-massive", "k", "all", "k", (0.65,)), ("qk-rtn-keep-random", "k", "all", "k", (0.55,)))
        for d, v in enumerate(vals)]
    table = pd.DataFrame([{"model": "m", "base": "fp32", "variant": var, "method": m, "sites": s, "layers": lay, "draw": d,
                           "measure": "accuracy", "task": "passkey", "kind": "contextual", "scorer": sc,
                           "value": v if sc == "first-line" else 0.0}
                          for var, m, s, lay, d, v in rows for sc in ("strict", "first-line")])
    arms = plotting.qk_arms(table, scorer="first-line").set_index(["part", "method"])
    assert arms.loc[("Q and K", "qk-rtn-keep-massive"), "mean"] == pytest.approx(0.7)  # draws 1, 2; not draw 0
    assert arms.loc[("Q and K", "qk-rtn-keep-random"), ["low", "high", "draws", "nearest"]].tolist() == [0.1, 0.3, 2, 0.3]
    assert arms.loc[("K only", "qk-rtn"), "mean"] == 0.6 and arms.loc[("K only", "qk-rtn"), "draws"] == 0
    fig = plotting.quant_qk(table, scorer="first-line", out=tmp_path / "qk")
    _written(tmp_path / "qk")
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted([0.3, 0.7, 0.2, 0.6, 0.65, 0.55])  # one bar per method and part
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Q and K", "K only"]
    assert "scored first-line" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="no 'rank' rows"):
        plotting.qk_arms(table, scorer="rank")
    plotting.close_all()
