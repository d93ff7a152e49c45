"""The ablation study's config: a grid of disruptions x tasks x models, and its presets.

:class:`SweepConfig` is frozen and serialised to JSON (the run's manifest); the CLI's
``massmech ablation`` flags are derived from its fields. :func:`preset` builds the named grids.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from massmech.causal.tasks.builtin import TASKS, is_task_name
from massmech.causal.vocabulary import (
    GRANULARITIES,
    KV_CACHE,
    QUICK_NEW_TOKENS,
    REPLACEMENTS,
    RULES,
    SCORERS,
    SELECTIONS,
    STAGES,
    SWEEP_CONTROLS,
    TARGETS,
    paper_setting,
)
from massmech.core.catalog import DEFAULT_MODEL
from massmech.errors import ConfigError, DisruptionError

LAYER_RANGES = ("all", "early", "middle", "late")


def layer_range(spec: str, n_layers: int) -> tuple[int, ...] | None:
    """Layers of a named range: ``all`` (None), ``early``/``middle``/``late`` thirds, or ``"a-b"``."""
    if spec == "all":
        return None
    thirds = [round(i * n_layers / 3) for i in range(4)]
    if spec in ("early", "middle", "late"):
        i = ("early", "middle", "late").index(spec)
        return tuple(range(thirds[i], max(thirds[i + 1], thirds[i] + 1)))
    try:
        a, b = (int(x) for x in spec.split("-"))
    except ValueError as err:
        raise DisruptionError(f"layer range must be all, early, middle, late or 'a-b', got {spec!r}") from err
    if not 0 <= a <= b < n_layers:
        raise DisruptionError(f"layer range {spec!r} out of range: the model has {n_layers} layers")
    return tuple(range(a, b + 1))


@dataclass(frozen=True)
class SweepConfig:
    """A grid of ablations (see the module docstring).

    Attributes:
        models: Model specs.
        tasks: Task names (default parameters; see :mod:`massmech.causal.tasks.builtin`).
        n: Examples per task; tasks with less data use all they have (``n`` is recorded).
        rules: ``"lambda"`` and/or ``"topk"``.
        lams: Lambda values (rule ``lambda``).
        ks: k values (rule ``topk``).
        targets: Any of ``q``, ``k``, ``qk``.
        stages: ``pre`` and/or ``post``.
        layer_ranges: ``all``, ``early``, ``middle``, ``late`` or ``"a-b"``.
        controls: Control kinds evaluated next to each massive condition (default: random
            non-massive dims matched in removed variance, see :mod:`massmech.causal.disruption`);
            ``kl``: that control scaled to the massive condition's KL on neutral text
            (:func:`massmech.causal.klmatch.kl_match`, once per model and condition).
        selection: Where the massive dims are chosen: ``prompt`` (each example's own prompt, the
            paper's) or ``calibration`` (a fixed set from a calibration corpus).
        replace: What replaces them: ``mean`` (each dim's prompt mean), ``zero``, ``pooled_mean``
            (one pooled mean per head, the paper's code) or ``calib_mean`` (the calibration mean).
        kv_cache: ``prefill`` disrupts the prompt only; ``every_step`` every decoded token too.
        granularities: ``dim`` (each selected coordinate, the paper's code) and/or ``pair`` (both
            coordinates of each selected RoPE pair; its controls pick whole pairs).
        scorer: How exact-answer tasks are scored: ``strict`` (every answer token is the argmax,
            teacher-forced), ``contains`` (the gold answer anywhere in ``max_new_tokens`` greedy
            tokens, the paper's code), ``first-line`` (in their first line) or ``rank`` (the gold
            answer against the task's distractors, as multiple choice); choice tasks are scored by
            their options whatever this says.
        max_new_tokens: Greedy tokens generated per example by ``contains`` and ``first-line``.
        calib_tokens: Corpus tokens for ``selection="calibration"`` / ``replace="calib_mean"``.
        seed: Seed of the examples and of the random controls.
        batch_size: Sequences per forward pass.
        paper_settings: Take k and the replacement from the official code's setting for each
            model's family (:func:`~massmech.causal.disruption.paper_setting`: Llama k=1 and Qwen2
            k=3 with one pooled mean per head, Gemma-2 k=22 set to zero); ``ks`` must then be
            empty. A model of any other family is refused before any cell runs.
    """

    models: Sequence[str] = (DEFAULT_MODEL,)
    tasks: Sequence[str] = tuple(TASKS)
    n: int = 100
    rules: Sequence[str] = field(default=("lambda",), metadata={"choices": tuple(r for r in RULES if r != "dims")})
    lams: Sequence[float] = (5.0,)
    ks: Sequence[int] = (4,)
    targets: Sequence[str] = field(default=("qk",), metadata={"choices": tuple(TARGETS)})
    stages: Sequence[str] = field(default=("pre",), metadata={"choices": STAGES})
    layer_ranges: Sequence[str] = ("all",)
    controls: Sequence[str] = field(default=("matched",), metadata={"choices": SWEEP_CONTROLS})
    selection: str = field(default="prompt", metadata={"choices": SELECTIONS})
    replace: str = field(default="mean", metadata={"choices": REPLACEMENTS})
    kv_cache: str = field(default="prefill", metadata={"choices": KV_CACHE})
    granularities: Sequence[str] = field(default=("dim",), metadata={"choices": GRANULARITIES})
    scorer: str = field(default="strict", metadata={"choices": SCORERS})
    max_new_tokens: int = 16
    calib_tokens: int = 4096
    seed: int = 0
    batch_size: int = 16
    paper_settings: bool = False

    def __post_init__(self) -> None:
        for name in ("models", "tasks", "rules", "lams", "ks", "targets", "stages", "layer_ranges", "controls",
                     "granularities"):
            v = getattr(self, name)
            object.__setattr__(self, name, tuple(v) if not isinstance(v, str) else (v,))
        for name in ("models", "tasks", "rules", "targets", "stages", "layer_ranges", "granularities"):
            if not getattr(self, name):
                raise ConfigError(f"SweepConfig.{name} is empty")
        for t in self.tasks:
            if not is_task_name(t):
                raise ConfigError(f"unknown task {t!r}; tasks are {', '.join(TASKS)}")
        for c in self.controls:
            if c not in SWEEP_CONTROLS:
                raise ConfigError(f"unknown control {c!r}; controls are {SWEEP_CONTROLS}")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if any(r not in ("lambda", "topk") for r in self.rules):
            raise ConfigError(f"rules must be 'lambda' and/or 'topk', got {self.rules}")
        if self.paper_settings and (self.ks or self.rules != ("topk",) or self.replace != "pooled_mean"):
            raise ConfigError(
                f"paper_settings takes k and the replacement from each model's family, but ks={self.ks}, "
                f"rules={self.rules}, replace={self.replace!r}: leave ks empty with rules=('topk',) and "
                "replace='pooled_mean', or set paper_settings=False (--no-paper-settings) to choose them"
            )
        if ("lambda" in self.rules and not self.lams) or ("topk" in self.rules and not self.ks and not self.paper_settings):
            raise ConfigError("rule 'lambda' needs lams and rule 'topk' needs ks")
        for r in self.layer_ranges:
            if r not in LAYER_RANGES and "-" not in r:
                raise ConfigError(f"layer range must be one of {LAYER_RANGES} or 'a-b', got {r!r}")
        self.disruptions(None)  # every grid point is a valid disruption (raises otherwise)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SweepConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})

    def disruptions(self, n_layers: int | None, architecture: str | None = None) -> list[tuple[Any, str]]:
        """Every massive condition and its controls, as ``(disruption, layer range)``.

        ``n_layers=None`` leaves every disruption on all layers (to check the grid only). With
        ``paper_settings``, ``architecture`` (the model's) gives k and the replacements.
        """
        from massmech.causal.disruption import Disruption  # torch: not needed for --help

        out = []
        ks, rep, lowest_rep = self.ks, self.replace, self.replace
        if self.paper_settings and architecture is not None:
            k, rep, lowest_rep = paper_setting(architecture)
            ks = (k,)
        points = [("lambda", lam, 4) for lam in self.lams if "lambda" in self.rules]
        points += [("topk", 5.0, k) for k in ks if "topk" in self.rules]
        for rule, lam, k in points:
            for target in self.targets:
                for stage, lr, grain in itertools.product(self.stages, self.layer_ranges, self.granularities):
                    layers = None if n_layers is None else layer_range(lr, n_layers)
                    d = Disruption(
                        target=target, stage=stage, rule=rule, lam=lam, k=k, layers=layers,
                        selection=self.selection, replace=rep, kv_cache=self.kv_cache,
                        seed=self.seed, granularity=grain,
                    )
                    out.append((d, lr))
                    out += [(replace(d.as_control(c), replace=lowest_rep) if c == "lowest" else d.as_control(c), lr)
                            for c in self.controls if c != "kl"]  # the kl control is found per model (plan)
        return out


# The sweeps behind the paper figures and the analyses scripts (one definition, used by both).
FOCUS_TASKS = ("country_capital", "kv_lookup", "passkey")
# The exact-answer tasks with distractors to rank the gold answer against (Task.distractors): the
# `rank` sweep's tasks (its contextual ones and its parametric ones, with and without demonstrations).
RANK_TASKS = ("kv_lookup", "knowledge_conflict", "country_capital", "city_country", "nba_team_city",
              "country_capital_0shot", "city_country_0shot", "nba_team_city_0shot")
CONTEXT_RANK_TASKS = ("kv_lookup", "knowledge_conflict")  # RANK_TASKS' contextual ones
# The controls of the `effect` sweeps: matched in size, in size within the same RoPE bands, in effect.
EFFECT_CONTROLS = ("matched", "band-matched", "kl")
# The paper's code scores `label in answer` over up to 512 generated tokens (run_experiment.py, Llama
# and Qwen); 32 greedy tokens here, enough for every built-in answer, at a CPU's cost.
PAPER_NEW_TOKENS = 32


def preset(name: str, models: tuple[str, ...] = (DEFAULT_MODEL,), n: int = 100, **overrides) -> SweepConfig:
    """A named sweep (every one also runs the variance-matched control):

    * ``main``: every task; baseline, lambda=5 pre-RoPE massive, and the matched, lowest-norm
      and count-matched random controls (massmech's lambda-rule variant);
    * ``paper``: the protocol of the paper's public code: post-RoPE Q and K, top-k per head with
      the official k and replacement of each model's family (``paper_settings``: k = 1 for
      Llama-family models such as SmolLM2 and 3 for Qwen2, one pooled scalar per head; k = 22 set
      to zero for Gemma-2), prompt only, decode steps untouched; the lowest-norm control and the
      variance-matched one, and the paper's scorer (``contains``: the gold answer anywhere in 32
      greedy tokens). Other families (Gemma-3) have no official setting and are refused:
      pass ``paper_settings=False, ks=(K,), replace=...`` and name the variant;
    * ``rank``: ``main``'s massive and matched arms on the exact-answer tasks with distractors
      (:data:`RANK_TASKS`), scored by rank: the gold answer's log-probability against the prompt's
      other values (kv_lookup), the memorised capital (knowledge_conflict) or 4 other answers of the
      task (parametric tasks, also zero-shot); no first token can fail it on a bare space;
    * ``effect``: ``rank``'s grid with three controls of each massive condition: matched in
      removed variance, matched in variance within the same RoPE bands (``band-matched``), and
      matched in effect (``kl``: scaled to the condition's next-token KL on neutral text);
      ``effect-zero``: the same with the massive dims set to zero (the value removed, not only its
      fluctuation), each control then matched to that;
    * ``k``: top-k rule, k = 1, 4, 16, three tasks; ``layers``: lambda=5 on all / early /
      middle / late layers, three tasks;
    * ``dose``: the dose-response: top-k, k = 1, 2, 4, 8, 16, against the matched control at
      each k, three tasks: accuracy against removed variance for both arms
      (:func:`massmech.plotting.dose_response`);
    * ``pairs``: top-k, k = 1 and 4, each by coordinate and by whole RoPE pair
      (``granularities``), each against its own matched control, three tasks. Its coordinate rows
      are the ``dose`` sweep's cells.
    """
    base = {
        "main": dict(tasks=tuple(TASKS), controls=("matched", "lowest", "random")),
        "rank": dict(tasks=RANK_TASKS, scorer="rank", controls=("matched",)),
        "effect": dict(tasks=RANK_TASKS, scorer="rank", controls=EFFECT_CONTROLS),
        "effect-zero": dict(tasks=RANK_TASKS, scorer="rank", controls=EFFECT_CONTROLS, replace="zero"),
        "paper": dict(tasks=tuple(TASKS), rules=("topk",), ks=(), paper_settings=True, stages=("post",),
                      replace="pooled_mean", kv_cache="prefill", controls=("lowest", "matched"),
                      scorer="contains", max_new_tokens=PAPER_NEW_TOKENS),
        "k": dict(tasks=FOCUS_TASKS, rules=("topk",), ks=(1, 4, 16), controls=("matched", "lowest")),
        "layers": dict(tasks=FOCUS_TASKS, layer_ranges=("all", "early", "middle", "late"),
                       controls=("matched", "lowest")),
        "dose": dict(tasks=FOCUS_TASKS, rules=("topk",), ks=(1, 2, 4, 8, 16), controls=("matched",)),
        "pairs": dict(tasks=FOCUS_TASKS, rules=("topk",), ks=(1, 4), granularities=("dim", "pair"),
                      controls=("matched",)),
        # issue 27, part 3: coordinate vs whole pair on the contextual tasks, each against its KL-matched control
        "pairs-effect": dict(tasks=CONTEXT_RANK_TASKS, scorer="rank", rules=("topk",), ks=(1, 4),
                             granularities=("dim", "pair"), controls=("matched", "kl")),
    }
    if name not in base:
        raise ConfigError(f"unknown sweep preset {name!r}; presets are {', '.join(base)}")
    return SweepConfig(**(base[name] | {"models": tuple(models), "n": n} | overrides))


def quick(config: SweepConfig) -> SweepConfig:
    """The ``massmech reproduce --quick`` version of a sweep: the same grid on 8 examples per task,
    with k capped at 4 (the tiny test models have 8 dims a head) and at most
    :data:`~massmech.causal.vocabulary.QUICK_NEW_TOKENS` generated tokens.

    >>> q, paper = quick(preset("k")), quick(preset("paper"))
    >>> q.n, q.ks, paper.max_new_tokens
    (8, (1, 4), 12)
    """
    ks = tuple(sorted({min(k, 4) for k in config.ks}))
    return replace(config, n=min(config.n, 8), ks=ks, max_new_tokens=min(config.max_new_tokens, QUICK_NEW_TOKENS))
