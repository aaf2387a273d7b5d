"""The study's database: schema, engine and transactions (SQLAlchemy 2).

Default: SQLite at ``<study_dir>/answers.db`` in WAL mode with synchronous=FULL (a commit is on disk before the
server answers 303) and a busy timeout; every transaction starts with BEGIN IMMEDIATE so that writers queue
instead of failing. Any other SQLAlchemy URL works too. UNIQUE(rater, pair) on answers is the schema's own rule:
no code path can store a second answer.
"""
from __future__ import annotations

import contextlib
import json
import random
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (CheckConstraint, DateTime, ForeignKey, ForeignKeyConstraint, Integer, String, Text,
                        UniqueConstraint, create_engine, event, select)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sim_core.errors import ConfigError

BUSY_TIMEOUT_MS = 30_000


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Rater(Base):
    __tablename__ = "raters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)


class Pair(Base):
    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    prompt: Mapped[str] = mapped_column(Text)
    image_a: Mapped[str] = mapped_column(String(32))
    image_b: Mapped[str] = mapped_column(String(32))


class Shown(Base):
    """Which pair a rater saw at which position and on which side A was: written when the pair is first shown."""
    __tablename__ = "shown"
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    a_side: Mapped[str] = mapped_column(String(5))
    shown_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("rater_id", "position", name="uq_shown_rater_position"),
                      CheckConstraint("a_side IN ('left', 'right')", name="ck_shown_side"))


class Answer(Base):
    __tablename__ = "answers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rater_id: Mapped[int] = mapped_column(Integer)
    pair_id: Mapped[int] = mapped_column(Integer)
    side: Mapped[str] = mapped_column(String(5))     # what the rater clicked
    chosen: Mapped[str] = mapped_column(String(1))   # what that side held: 'a' or 'b'
    answered_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("rater_id", "pair_id", name="uq_answer_rater_pair"),
                      ForeignKeyConstraint(["rater_id", "pair_id"], ["shown.rater_id", "shown.pair_id"]),
                      CheckConstraint("side IN ('left', 'right')", name="ck_answer_side"),
                      CheckConstraint("chosen IN ('a', 'b')", name="ck_answer_chosen"))


def default_url(study_dir) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'answers.db'}"


def make_engine(url: str, must_exist: bool = False) -> Engine:
    """An engine for an SQLAlchemy URL; ``must_exist``: an SQLite file that is not there is a ConfigError (SQLite
    would create an empty one). A malformed URL or a missing driver is a ConfigError too."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database in (None, "", ":memory:"):  # each connection would get its own, empty database
                raise ConfigError(f"{url} is an in-memory SQLite database: answers must go to a file")
            if must_exist and not Path(parsed.database).is_file():
                raise ConfigError(f"no SQLite database at {url}")
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
                                   pool_size=8, max_overflow=32)
            _sqlite_setup(engine)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise ConfigError(f"bad database URL {url!r}: {e}") from None


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # pysqlite's own implicit BEGIN off: we send BEGIN IMMEDIATE ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        # the write lock at the start: a read-then-write transaction cannot fail half-way on a busy database
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextlib.contextmanager
def transaction(engine: Engine):
    """A session inside one transaction: committed when the block ends, rolled back if it raises."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def init_db(engine: Engine, study: dict) -> None:
    """Create the tables and load the study's pairs and raters (hashes only); a database that holds another
    study is refused in one line."""
    Base.metadata.create_all(engine)
    with transaction(engine) as s:
        row = s.get(Meta, "study_id")
        if row is not None:
            if row.value != study["study_id"]:
                raise ConfigError(f"the database {engine.url!r} holds study {row.value}, not {study['study_id']}")
            return
        meta = {"study_id": study["study_id"], "label_a": study["label_a"], "label_b": study["label_b"],
                "seed": json.dumps(study["seed"]), "question": study["question"]}
        s.add_all(Meta(key=k, value=v) for k, v in meta.items())
        s.add_all(Pair(id=p["id"], prompt=p["prompt"], image_a=p["image_a"], image_b=p["image_b"])
                  for p in study["pairs"])
        s.add_all(Rater(id=r["id"], token_sha256=r["token_sha256"]) for r in study["raters"])


def rater_plan(study_id: str, rater_id: int, pair_ids: list[int]) -> list[tuple[int, str]]:
    """The order of the pairs and the side of A for one rater: random per rater, reproducible from the study."""
    rng = random.Random(f"{study_id}:{rater_id}")
    order = sorted(pair_ids)
    rng.shuffle(order)
    return [(p, rng.choice(("left", "right"))) for p in order]


def current_pair(s: Session, study_id: str, rater_id: int) -> tuple[Shown | None, int, int]:
    """The pair to show the rater now (recording it when first shown), how many they answered, how many pairs.
    None when every pair is answered."""
    pair_ids = list(s.scalars(select(Pair.id)))
    answered = set(s.scalars(select(Answer.pair_id).where(Answer.rater_id == rater_id)))
    shown = list(s.scalars(select(Shown).where(Shown.rater_id == rater_id).order_by(Shown.position)))
    open_ = [x for x in shown if x.pair_id not in answered]
    if open_:
        return open_[0], len(answered), len(pair_ids)
    if len(shown) >= len(pair_ids):
        return None, len(answered), len(pair_ids)
    pair_id, a_side = rater_plan(study_id, rater_id, pair_ids)[len(shown)]
    row = Shown(rater_id=rater_id, pair_id=pair_id, position=len(shown) + 1, a_side=a_side, shown_at=now())
    s.add(row)
    s.flush()
    return row, len(answered), len(pair_ids)


