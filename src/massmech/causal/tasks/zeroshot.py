"""Zero-shot variants of the parametric tasks with exact answers (issue 26).

The built-in parametric prompts carry three demonstrations, which makes them partly contextual.
Each variant here asks the same items (same uids, so a comparison with its few-shot task is
paired) with no demonstration; without them the answer's format is not given, so score them with
the ``rank`` scorer (the gold answer against 4 other answers of the task, drawn by the item:
:meth:`~massmech.causal.tasks.base.Task.distractors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from massmech.causal.tasks.base import Task
from massmech.causal.tasks.builtin import CityCountry, CountryCapital, NbaTeamCity


@dataclass(frozen=True)
class CountryCapitalZeroShot(CountryCapital):
    """``The capital of {country} is`` -> `` {capital}``, no demonstrations.

    >>> ex = CountryCapitalZeroShot().examples(1)[0]; ex.prompt, ex.answer
    ('The capital of Norway is', ' Oslo')
    """

    name: ClassVar[str] = "country_capital_0shot"
    n_shots: ClassVar[int] = 0


@dataclass(frozen=True)
class CityCountryZeroShot(CityCountry):
    """``{city} is a city in`` -> `` {country}``, no demonstrations.

    >>> CityCountryZeroShot().examples(1)[0].prompt
    'Ciudad del Este is a city in'
    """

    name: ClassVar[str] = "city_country_0shot"
    n_shots: ClassVar[int] = 0


@dataclass(frozen=True)
class NbaTeamCityZeroShot(NbaTeamCity):
    """``The {nickname} are an NBA team from`` -> `` {city}``, no demonstrations.

    >>> NbaTeamCityZeroShot().examples(1)[0].prompt
    'The Knicks are an NBA team from'
    """

    name: ClassVar[str] = "nba_team_city_0shot"
    n_shots: ClassVar[int] = 0


ZERO_SHOT_TASKS: dict[str, type[Task]] = {t.name: t for t in (CountryCapitalZeroShot, CityCountryZeroShot,
                                                              NbaTeamCityZeroShot)}
