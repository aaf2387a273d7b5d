"""The study's result, read from the database only: A's win rate over B with its Wilson 95% interval."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from sqlalchemy import func, select

from sim_core.errors import ConfigError
from workflow.study.db import Answer, Meta, Pair, Rater, Shown, default_url, make_engine, transaction

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (n = 0: the whole of [0, 1])."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _engine(study_dir_or_db_url):
    """A study folder (its answers.db) or an SQLAlchemy URL."""
    text = str(study_dir_or_db_url)
    if "://" in text:
        return make_engine(text, must_exist=True)
    path = Path(text)
    if not (path / "study.json").is_file() or not (path / "answers.db").is_file():
        raise ConfigError(f"{path} is not a study folder (no study.json and answers.db)")
    return make_engine(default_url(path))


def study_result(study_dir_or_db_url=None, engine=None) -> dict:
    """Wins of A, the total, A's rate with its Wilson 95% interval, raters who answered, per-pair counts."""
    own = engine is None
    engine = engine or _engine(study_dir_or_db_url)
    try:
        with transaction(engine) as s:
            meta = {m.key: m.value for m in s.scalars(select(Meta))}
            if "study_id" not in meta:
                raise ConfigError("the database holds no study")
            per_pair = {p.id: {"pair": p.id, "prompt": p.prompt, "wins_a": 0, "wins_b": 0}
                        for p in s.scalars(select(Pair).order_by(Pair.id))}
            for pair_id, chosen, n in s.execute(select(Answer.pair_id, Answer.chosen, func.count())
                                                .group_by(Answer.pair_id, Answer.chosen)):
                per_pair[pair_id][f"wins_{chosen}"] = n
            raters = s.scalar(select(func.count(func.distinct(Answer.rater_id))))
            invited = s.scalar(select(func.count()).select_from(Rater))
    finally:
        if own:
            engine.dispose()
    wins = sum(p["wins_a"] for p in per_pair.values())
    total = wins + sum(p["wins_b"] for p in per_pair.values())
    low, high = wilson_interval(wins, total)
    return {"study_id": meta["study_id"], "label_a": meta["label_a"], "label_b": meta["label_b"],
            "wins_a": wins, "wins_b": total - wins, "total": total,
            "rate_a": wins / total if total else None, "wilson95_low": low, "wilson95_high": high,
            "raters_answered": raters, "raters_invited": invited, "pairs": list(per_pair.values())}


CSV_COLUMNS = ["answer", "rater", "pair", "prompt", "position", "a_side", "clicked", "chosen", "chosen_label",
               "answered_at"]


def answers_csv(study_dir_or_db_url=None, engine=None) -> str:
    """Every answer as one CSV row (raters by number, never by token)."""
    own = engine is None
    engine = engine or _engine(study_dir_or_db_url)
    try:
        with transaction(engine) as s:
            labels = {m.key: m.value for m in s.scalars(select(Meta).where(Meta.key.in_(["label_a", "label_b"])))}
            rows = s.execute(select(Answer, Pair.prompt, Shown.position, Shown.a_side)
                             .join(Pair, Pair.id == Answer.pair_id)
                             .join(Shown, (Shown.rater_id == Answer.rater_id) & (Shown.pair_id == Answer.pair_id))
                             .order_by(Answer.id)).all()
    finally:
        if own:
            engine.dispose()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for a, prompt, position, a_side in rows:
        w.writerow([a.id, a.rater_id, a.pair_id, prompt, position, a_side, a.side, a.chosen,
                    labels[f"label_{a.chosen}"], a.answered_at.isoformat()])
    return buf.getvalue()
