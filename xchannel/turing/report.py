"""Turing-test statistics: fool rates with bootstrap standard errors, beside the paper's Table 1.

For a method tested by participants ``i = 1..N`` with ``k_i`` of ``n_i`` counted test trials fooled (the real
photo clicked as fake; practice trials and attention checks are not counted), the fool rate is the pooled
fraction ``p = sum(k_i) / sum(n_i)`` (the mean of the per-participant rates when every ``n_i`` is 36, as in a
complete session of the paper's protocol: 40 test trials less 4 attention checks).

Its standard error is estimated, as in the paper ("mean and standard error reported, estimated by bootstrap"),
with Efron's nonparametric bootstrap: draw ``N`` participants with replacement, recompute ``p``, repeat ``B``
times, and take the standard deviation of the ``B`` replicates. Resampling participants rather than trials keeps
the between-participant variation (some people are harder to fool) in the error. With equal ``n_i`` the ideal
(B -> infinity) bootstrap SE is the plug-in ``sqrt(sum_i (r_i - p)^2) / N`` with ``r_i = k_i / n_i``.

The attention-check accuracy (ground truth vs Random: the fraction on which the Random recolouring was clicked)
gets the same treatment; the paper reports 87%.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xchannel.turing.store import Answer, AnswerStore

# Table 1, column "AMT Labeled Real (%)": method folder -> (row label, mean, bootstrap SE).
PAPER_AMT: dict[str, tuple[str, float, float | None]] = {
    "ground_truth": ("Ground truth", 50.0, None),
    "random": ("Random", 13.0, 4.4),
    "dahl": ("Dahl", 18.3, 2.8),
    "larsson": ("Larsson et al.", 27.2, 2.7),
    "l2": ("Ours (L2)", 21.2, 2.5),
    "l2_ft": ("Ours (L2, ft)", 23.9, 2.8),
    "ours_class": ("Ours (class)", 25.2, 2.7),
    "ours_full": ("Ours (full)", 32.3, 2.2),
}
PAPER_ATTENTION_ACCURACY = 87.0  # "Participants successfully identified these random colorizations as fake 87%"
DEFAULT_BOOTSTRAP = 10_000


@dataclass(frozen=True)
class RateEstimate:
    """A pooled rate over participants with its bootstrap SE (``None`` with fewer than 2 participants)."""

    rate: float | None
    se: float | None
    participants: int
    trials: int
    hits: int


def per_participant(answers: Iterable[Answer], *, attention: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(hits, totals)`` per participant over the counted test trials.

    ``attention=False``: non-practice, non-attention trials; a hit is being fooled (real photo clicked).
    ``attention=True``: attention checks; a hit is a correct answer (the Random recolouring clicked).
    """
    hits: dict[str, int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    for a in answers:
        if a.is_practice or a.is_attention_check != attention:
            continue
        totals[a.participant_id] += 1
        hits[a.participant_id] += int(a.correct if attention else a.fooled)
    keys = sorted(totals)
    return (np.array([hits[k] for k in keys], dtype=np.int64), np.array([totals[k] for k in keys], dtype=np.int64))


def bootstrap_rate(hits: np.ndarray, totals: np.ndarray, *, n_boot: int = DEFAULT_BOOTSTRAP,
                   rng: np.random.Generator, chunk: int = 1000) -> RateEstimate:
    """Pooled rate ``sum(hits) / sum(totals)`` and its participant-bootstrap SE (``n_boot`` replicates)."""
    hits, totals = np.asarray(hits, dtype=np.int64), np.asarray(totals, dtype=np.int64)
    n = len(totals)
    if n == 0 or totals.sum() == 0:
        return RateEstimate(None, None, n, int(totals.sum()), int(hits.sum()))
    rate = float(hits.sum() / totals.sum())
    if n < 2 or n_boot < 2:
        return RateEstimate(rate, None, n, int(totals.sum()), int(hits.sum()))
    replicates = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        replicates[start:start + b] = hits[idx].sum(axis=1) / totals[idx].sum(axis=1)
    return RateEstimate(rate, float(replicates.std(ddof=1)), n, int(totals.sum()), int(hits.sum()))


def summarize(answers: list[Answer], completed_sessions: set[str] | None = None, *,
              n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """The report as a JSON-able dict. ``completed_sessions``: if given, only their answers are counted."""
    if completed_sessions is not None:
        answers = [a for a in answers if a.session_id in completed_sessions]
    rng = np.random.default_rng(seed)
    by_method: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_method[a.method].append(a)
    order = [m for m in PAPER_AMT if m in by_method] + sorted(m for m in by_method if m not in PAPER_AMT)
    methods = {}
    for m in order:
        fool = bootstrap_rate(*per_participant(by_method[m], attention=False), n_boot=n_boot, rng=rng)
        att = bootstrap_rate(*per_participant(by_method[m], attention=True), n_boot=n_boot, rng=rng)
        counted = [a.response_ms for a in by_method[m] if not a.is_practice]
        label, paper_rate, paper_se = PAPER_AMT.get(m, (m, None, None))
        methods[m] = {
            "label": label,
            "fool_rate": asdict(fool),
            "attention_accuracy": asdict(att),
            "median_response_ms": float(np.median(counted)) if counted else None,
            "paper_fool_rate_percent": paper_rate,
            "paper_se_percent": paper_se,
        }
    overall_attention = bootstrap_rate(*per_participant(answers, attention=True), n_boot=n_boot, rng=rng)
    return {
        "bootstrap": {"replicates": n_boot, "seed": seed, "resampling_unit": "participant"},
        "participants": len({a.participant_id for a in answers}),
        "answers": len(answers),
        "methods": methods,
        "attention_accuracy": asdict(overall_attention),
        "paper_attention_accuracy_percent": PAPER_ATTENTION_ACCURACY,
    }


def summarize_db(db: str | Path, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                 include_incomplete: bool = False) -> dict:
    """:func:`summarize` the answers of database ``db`` (completed sessions only unless ``include_incomplete``)."""
    with AnswerStore(db, create=False) as store:
        answers = store.answers()
        sessions = store.sessions()
    completed = {s.session_id for s in sessions if s.completed}
    summary = summarize(answers, None if include_incomplete else completed, n_boot=n_boot, seed=seed)
    summary["db"] = str(db)
    summary["sessions"] = {"started": len(sessions), "completed": len(completed),
                           "counted": len(sessions) if include_incomplete else len(completed)}
    return summary


def _pct(est: dict) -> str:
    if est["rate"] is None:
        return "—"
    se = "" if est["se"] is None else f" ± {100 * est['se']:.1f}"
    return f"{100 * est['rate']:.1f}{se}"


def _paper(rate: float | None, se: float | None) -> str:
    if rate is None:
        return "—"
    return f"{rate:.1f}" if se is None else f"{rate:.1f} ± {se:.1f}"


def markdown(summary: dict) -> str:
    """The report as a markdown table, measured fool rates beside the paper's (Table 1, AMT column)."""
    lines = [
        "| Method | Folder | Participants | Test trials | Labelled real (%) | Paper (%) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    measured = summary["methods"]
    for m in list(PAPER_AMT) + [m for m in measured if m not in PAPER_AMT]:  # Table 1's row order
        if m in measured:
            row, fool = measured[m], measured[m]["fool_rate"]
            lines.append(f"| {row['label']} | `{m}` | {fool['participants']} | {fool['trials']} | {_pct(fool)} | "
                         f"{_paper(row['paper_fool_rate_percent'], row['paper_se_percent'])} |")
        else:
            label, rate, se = PAPER_AMT[m]
            lines.append(f"| {label} | `{m}` | 0 | 0 | — | {_paper(rate, se)} |")
    att = summary["attention_accuracy"]
    b = summary["bootstrap"]
    lines += [
        "",
        f"Attention checks (ground truth vs Random): {_pct(att)}% identified the Random recolouring as fake "
        f"({att['hits']} of {att['trials']} trials, {att['participants']} participants; paper: "
        f"{PAPER_ATTENTION_ACCURACY:.0f}%).",
        "",
        "Labelled real = fool rate: the fraction of test trials (practice and attention checks excluded) on which "
        "the real photo was clicked as fake; reproducing the ground truth would score 50%. ± is the bootstrap "
        f"standard error over participants ({b['replicates']} replicates, seed {b['seed']}).",
    ]
    if "sessions" in summary:
        s = summary["sessions"]
        lines.append(f"Sessions: {s['started']} started, {s['completed']} completed, {s['counted']} counted.")
    return "\n".join(lines) + "\n"

