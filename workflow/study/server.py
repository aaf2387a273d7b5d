"""The study's web application: one page per rater and pair, answers stored once, an admin view.

No request ever names a file: images are served from bytes loaded at startup by their ids in study.json, tokens
are compared by their SHA-256, and form bodies are parsed here (urlencoded, at most MAX_BODY bytes) so that a bad
request is refused before the database is touched.
"""
from __future__ import annotations

import contextlib
import hmac
import html
import json
import re
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sim_core.errors import ConfigError
from workflow.study.build import FORMAT, token_hash
from workflow.study.db import Answer, Pair, Rater, current_pair, default_url, init_db, make_engine, now, transaction
from workflow.study.results import answers_csv, study_result

MAX_BODY = 4096
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
IMAGE_RE = re.compile(r"([0-9a-f]{32})\.png")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: never send it to another site
}
CSS = """body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em}
#pair{display:flex;gap:2em;justify-content:center}figure{margin:0;text-align:center}
img{width:min(30em,42vw,58vh);image-rendering:pixelated;border:1px solid #888}
button{font-size:1.2em;margin-top:.5em;padding:.3em 2em}#prompt{font-size:1.3em}
"""
# browsers ask for an icon on every page; a 404 there would be a console error on each one
ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="7" height="14" x="0" y="1" '
        'fill="#4a7"/><rect width="7" height="14" x="9" y="1" fill="#47a"/></svg>')


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
                        f'</title><link rel="stylesheet" href="/static/study.css">'
                        f'<link rel="icon" href="/favicon.ico" type="image/svg+xml"></head><body>{body}</body></html>',
                        status_code=status)


def load_study(study_dir) -> tuple[dict, dict[str, bytes]]:
    """study.json and the bytes of its images, checked; one ConfigError line otherwise."""
    study_dir = Path(study_dir)
    try:
        study = json.loads((study_dir / "study.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{study_dir} is not a study folder: {e}") from None
    if study.get("format") != FORMAT:
        raise ConfigError(f"{study_dir / 'study.json'} is not a {FORMAT} file")
    images = {}
    for p in study["pairs"]:
        for key in ("image_a", "image_b"):
            image_id = p[key]
            if not re.fullmatch(r"[0-9a-f]{32}", image_id):
                raise ConfigError(f"study.json names a bad image id {image_id!r}")
            try:
                images[image_id] = (study_dir / "images" / f"{image_id}.png").read_bytes()
            except OSError as e:
                raise ConfigError(f"image {image_id} of pair {p['id']} cannot be read: {e.strerror}") from None
    return study, images


def create_app(study_dir, db_url: str | None = None) -> FastAPI:
    study, images = load_study(study_dir)
    engine = make_engine(db_url or default_url(study_dir))
    init_db(engine, study)
    study_id, question = study["study_id"], study["question"]
    admin_sha = study["admin_token_sha256"]
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        engine.dispose()

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if "cache-control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def short_errors(request: Request, exc: StarletteHTTPException):
        return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", status_code=exc.status_code,
                                 headers=getattr(exc, "headers", None))

    def rater_id(s, token: str) -> int:
        if not TOKEN_RE.fullmatch(token):
            raise HTTPException(404, "unknown invitation")
        rid = s.scalar(select(Rater.id).where(Rater.token_sha256 == token_hash(token)))
        if rid is None:
            raise HTTPException(404, "unknown invitation")
        return rid

    def next_pair(token: str):
        """(shown row, answered, total, pair). Two requests of one rater may both record the next pair where the
        database does not serialise them (SQLite's BEGIN IMMEDIATE does): the schema refuses the second, which
        then reads the first's."""
        for attempt in (1, 2):
            try:
                with transaction(engine) as s:
                    rid = rater_id(s, token)
                    row, answered, total = current_pair(s, study_id, rid)
                    return row, answered, total, (s.get(Pair, row.pair_id) if row is not None else None)
            except IntegrityError:
                if attempt == 2:
                    raise HTTPException(409, "please reload the page") from None

    def show(token: str) -> HTMLResponse:
        row, answered, total, pair = next_pair(token)
        if row is None:
            return _page("Thank you", f'<h1 id="done">Thank you!</h1><p id="progress">All {total} pairs answered.'
                                      "</p><p>You can close this page.</p>")
        left, right = (pair.image_a, pair.image_b) if row.a_side == "left" else (pair.image_b, pair.image_a)
        e = html.escape
        body = (f'<p id="progress">Pair {answered + 1} of {total}</p>'
                f'<p id="prompt">{e(pair.prompt)}</p><h2 id="question">{e(question)}</h2>'
                f'<form id="answer" method="post" action="/r/{e(token)}/answer">'
                f'<input type="hidden" name="pair" value="{pair.id}"><div id="pair">'
                f'<figure id="left"><img src="/img/{left}.png" alt="left image"><figcaption>'
                f'<button type="submit" name="choice" value="left" id="choose-left">Left</button></figcaption></figure>'
                f'<figure id="right"><img src="/img/{right}.png" alt="right image"><figcaption>'
                f'<button type="submit" name="choice" value="right" id="choose-right">Right</button></figcaption>'
                f'</figure></div></form>')
        return _page(f"Pair {answered + 1} of {total}", body)

    @app.get("/r/{token}")
    def rater_page(token: str):
        return show(token)

    async def read_form(request: Request) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise HTTPException(415, "expected an application/x-www-form-urlencoded form")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise HTTPException(413, f"body larger than {MAX_BODY} bytes")
        body = b""
        async for chunk in request.stream():  # a chunked body without a length is cut off at the limit too
            body += chunk
            if len(body) > MAX_BODY:
                raise HTTPException(413, f"body larger than {MAX_BODY} bytes")
        try:
            fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True, max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            raise HTTPException(400, "malformed form body") from None
        if set(fields) != {"pair", "choice"} or any(len(v) != 1 for v in fields.values()):
            raise HTTPException(400, "the form must hold exactly one 'pair' and one 'choice'")
        return {k: v[0] for k, v in fields.items()}

    def store(token: str, pair_id: int, side: str) -> None:
        with transaction(engine) as s:
            rid = rater_id(s, token)
            if s.get(Pair, pair_id) is None:
                raise HTTPException(404, "unknown pair")
            if s.scalar(select(Answer.id).where(Answer.rater_id == rid, Answer.pair_id == pair_id)) is not None:
                raise HTTPException(409, "this pair is already answered")
            row, _, _ = current_pair(s, study_id, rid)
            if row is None or row.pair_id != pair_id:
                raise HTTPException(409, "this pair is not the one shown to you; reload the page")
            s.add(Answer(rater_id=rid, pair_id=pair_id, side=side, chosen="a" if side == row.a_side else "b",
                         answered_at=now()))
            try:
                s.flush()
            except IntegrityError:  # a concurrent request stored it first: the schema refuses the second
                raise HTTPException(409, "this pair is already answered") from None

    @app.post("/r/{token}/answer")
    async def answer(token: str, request: Request):
        if not TOKEN_RE.fullmatch(token):
            raise HTTPException(404, "unknown invitation")
        form = await read_form(request)
        if not re.fullmatch(r"[0-9]{1,6}", form["pair"]):
            raise HTTPException(400, "pair must be a pair number")
        if form["choice"] not in ("left", "right"):
            raise HTTPException(400, "choice must be 'left' or 'right'")
        await run_in_threadpool(store, token, int(form["pair"]), form["choice"])
        return RedirectResponse(f"/r/{token}", status_code=303)

    @app.get("/img/{name}")
    def image(name: str):
        m = IMAGE_RE.fullmatch(name)
        if m is None or m.group(1) not in images:
            raise HTTPException(404, "no such image")
        return Response(images[m.group(1)], media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/static/study.css")
    def css():
        return Response(CSS, media_type="text/css", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/favicon.ico")
    def icon():
        return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "private, max-age=3600"})

    def check_admin(token: str) -> None:
        if not hmac.compare_digest(token_hash(token), admin_sha):
            raise HTTPException(404, "not found")

    @app.get("/admin/{token}")
    def admin(token: str):
        check_admin(token)
        r = study_result(engine=engine)
        e = html.escape
        rate = "–" if r["rate_a"] is None else f"{100 * r['rate_a']:.2f}%"
        rows = "".join(f"<tr><td>{p['pair']}</td><td>{e(p['prompt'])}</td><td>{p['wins_a']}</td>"
                       f"<td>{p['wins_b']}</td></tr>" for p in r["pairs"])
        body = (f"<h1>Preference study</h1><p id=\"summary\"><span id=\"label-a\">{e(r['label_a'])}</span> preferred "
                f"over <span id=\"label-b\">{e(r['label_b'])}</span>: <span id=\"rate\">{rate}</span> "
                f"(<span id=\"wins\">{r['wins_a']}</span> of <span id=\"total\">{r['total']}</span> answers; "
                f"Wilson 95% interval <span id=\"low\">{100 * r['wilson95_low']:.2f}%</span> – "
                f"<span id=\"high\">{100 * r['wilson95_high']:.2f}%</span>)</p>"
                f"<p><span id=\"raters\">{r['raters_answered']}</span> of {r['raters_invited']} raters answered. "
                f"<a href=\"/admin/{e(token)}/results.csv\">answers.csv</a></p>"
                f"<table id=\"pairs\"><tr><th>pair</th><th>prompt</th><th>{e(r['label_a'])}</th>"
                f"<th>{e(r['label_b'])}</th></tr>{rows}</table>")
        return _page("Preference study: results", body)

    @app.get("/admin/{token}/results.csv")
    def admin_csv(token: str):
        check_admin(token)
        return Response(answers_csv(engine=engine), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="answers.csv"'})

    return app
