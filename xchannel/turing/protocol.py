"""The experimental protocol of the paper's colorization Turing test (Sec. 3.1, "Perceptual realism (AMT)").

From the paper:

* "Participants ... were shown a series of pairs of images. Each pair consisted of a color photo next to a
  re-colored version, produced by either our algorithm or a baseline. Participants were asked to click on the
  photo they believed contained *fake* colors." -> each :class:`Trial` has an image id, the source of the fake
  (a method, or ``random``) and the side the fake is shown on, drawn by a fair coin per trial.
* "Individual images of resolution 256x256 were shown for one second each, and after each pair, participants were
  given unlimited time to respond." -> :data:`DISPLAY_MS`, :data:`~xchannel.turing.pairs.IMAGE_SIZE`.
* "Each experimental session consisted of 10 practice trials (excluded from subsequent analysis), followed by 40
  test pairs. On the practice trials, participants were given feedback ... No feedback was given during the 40
  test pairs." -> :data:`N_PRACTICE`, :data:`N_TEST`.
* "Each session tested only a single algorithm at a time, and participants were only allowed to complete at most
  one session." -> one method per session (:func:`choose_method` balances them), one session per participant
  (enforced by the store).
* "10% of the trials pitted the ground truth image against the Random baseline" -> of the 40 test trials,
  ``round(0.1 * 40) = 4`` are attention checks, at random positions. (Practice trials use the session's method.)

Image ids are drawn without replacement while the method has enough images, so a session of 50 trials on a
folder of at least 46 method images and 4 further Random images never repeats a photo; smaller folders (pilots,
tests) cycle through reshuffled ids.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from xchannel.turing.pairs import RANDOM

N_PRACTICE = 10
N_TEST = 40
ATTENTION_FRACTION = 0.10
DISPLAY_MS = 1000
SIDES = ("left", "right")


@dataclass(frozen=True)
class ProtocolConfig:
    """Session shape; the defaults are the paper's."""

    n_practice: int = N_PRACTICE
    n_test: int = N_TEST
    attention_fraction: float = ATTENTION_FRACTION
    display_ms: int = DISPLAY_MS

    def __post_init__(self) -> None:
        if self.n_practice < 0 or self.n_test < 1:
            raise ValueError(f"need n_practice >= 0 and n_test >= 1, got {self.n_practice}, {self.n_test}")
        if not 0.0 <= self.attention_fraction < 1.0:
            raise ValueError(f"attention_fraction must be in [0, 1), got {self.attention_fraction}")
        if self.display_ms < 1:
            raise ValueError(f"display_ms must be >= 1, got {self.display_ms}")

    @property
    def n_attention(self) -> int:
        """Attention checks among the test trials: ``round(fraction * n_test)`` (4 of the paper's 40)."""
        return round(self.attention_fraction * self.n_test)

    @property
    def n_trials(self) -> int:
        return self.n_practice + self.n_test


@dataclass(frozen=True)
class Trial:
    """One planned pair. ``fake_source`` is the folder the fake image comes from (the session's method, or
    ``random`` on attention checks); ``fake_side`` is where it is shown ("left" or "right")."""

    index: int
    image_id: str
    fake_source: str
    fake_side: str
    is_practice: bool
    is_attention_check: bool


def _cycle(ids: Sequence[str], rng: random.Random, avoid: set[str] = frozenset()) -> Iterator[str]:
    """Endless stream of ``ids``: each pass is a fresh shuffle, ids in ``avoid`` placed after the others."""
    while True:
        fresh = [i for i in ids if i not in avoid]
        used = [i for i in ids if i in avoid]
        rng.shuffle(fresh)
        rng.shuffle(used)
        yield from fresh + used
        avoid = frozenset()


def plan_session(method: str, method_ids: Sequence[str], random_ids: Sequence[str], rng: random.Random,
                 cfg: ProtocolConfig = ProtocolConfig()) -> list[Trial]:
    """The ordered trials of one session testing ``method``.

    ``cfg.n_practice`` practice trials, then ``cfg.n_test`` test trials of which ``cfg.n_attention`` (at positions
    drawn uniformly without replacement) show ground truth vs ``random``; all others show ground truth vs
    ``method``. The fake's side is a fair coin flip per trial.
    """
    if not method_ids:
        raise ValueError(f"method {method!r} has no images")
    if cfg.n_attention and not random_ids:
        raise ValueError("attention checks need Random-baseline images")
    attention_positions = set(rng.sample(range(cfg.n_test), cfg.n_attention))
    method_stream = _cycle(list(method_ids), rng)
    n_method = cfg.n_trials - cfg.n_attention
    method_draws = [next(method_stream) for _ in range(n_method)]
    random_stream = _cycle(list(random_ids), rng, avoid=set(method_draws))
    random_draws = iter([next(random_stream) for _ in range(cfg.n_attention)])
    method_iter = iter(method_draws)

    trials: list[Trial] = []
    for index in range(cfg.n_trials):
        practice = index < cfg.n_practice
        attention = not practice and (index - cfg.n_practice) in attention_positions
        trials.append(Trial(
            index=index,
            image_id=next(random_draws) if attention else next(method_iter),
            fake_source=RANDOM if attention else method,
            fake_side=rng.choice(SIDES),
            is_practice=practice,
            is_attention_check=attention,
        ))
    return trials


def choose_method(load: Mapping[str, int], rng: random.Random) -> str:
    """Balanced assignment: a method with the fewest sessions so far (``load``), ties broken at random.

    Called with the counts of completed plus recently active sessions, so every method reaches the paper's
    "40 participants evaluated each algorithm" at the same pace.
    """
    if not load:
        raise ValueError("no methods to assign")
    low = min(load.values())
    return rng.choice(sorted(m for m, n in load.items() if n == low))
