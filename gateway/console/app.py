"""The console's web application (Starlette): pages, actions, the live stream, /metrics.

    app = build_app(console)      # console: gateway.console.Console (services, accounts, hub)

Every route states the right it needs ("read", "act", "manage") and is checked here, on the
server, from the session cookie: no session -> the login page (pages) or 401 (the stream and
fragments); a session without the right -> 403. Every POST carries the session's CSRF token in
the form (`csrf`); a missing or wrong one -> 403 before anything is read from the form's other
fields. The login form has its own token (a SameSite=Strict cookie and the same value in the
form). Templates are autoescaped and the pages carry a Content-Security-Policy without inline
script, so a device or place called `<script>` is text.
"""

import anyio
import datetime
import json
import logging
import secrets
import time
import urllib.parse

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.cases.service import OUTCOMES, CaseError, CaseNotFound
from gateway.console import i18n
from gateway.console.accounts import AccountError, LockedOut, LoginFailed, csrf_ok
from gateway.console.live import summary
from gateway.metrics import CONTENT_TYPE
from gateway.patrol.rounds import local_hhmm
from gateway.village.cliutil import fmt_time

log = logging.getLogger("fengqiao.console")

COOKIE = "fq_session"
LOGIN_CSRF = "fq_login_csrf"
LANG = "fq_lang"
HERE = __file__.rsplit("/", 1)[0]
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class EventStream(StreamingResponse):
    """A StreamingResponse that also ends when the client goes away (http.disconnect), so a closed
    browser tab frees its stream at once instead of at the next keep-alive write."""

    async def __call__(self, scope, receive, send):
        async with anyio.create_task_group() as tg:
            async def until_disconnect():
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnect)
            await self.stream_response(send)
            tg.cancel_scope.cancel()


class Denied(Exception):
    def __init__(self, response):
        super().__init__(response.status_code)
        self.response = response


def build_app(console):
    env = Environment(loader=FileSystemLoader(HERE + "/templates"), autoescape=select_autoescape(["html"]))
    flashes = {}

    def lang_of(request):
        return i18n.pick(request.headers.get("accept-language"), request.cookies.get(LANG))

    def render(request, name, session=None, status=200, **ctx):
        lang = lang_of(request)
        off = ctx.pop("offset", None)
        if off is None:
            off = console.views.offset()

        def tt(key, *args):
            return i18n.t(lang, key, *args)

        flash = flashes.pop(session.token, None) if session else None
        page = env.get_template(name).render(
            t=tt, lv=lambda name: i18n.level(lang, name), lang=lang, session=session, flash=flash, path=request.url.path,
            query=request.url.query, hhmm=lambda v: local_hhmm(v, off) if v else "",
            when=lambda v: fmt_time(v, off) if v else "", outcomes=OUTCOMES, secure=console.tls, **ctx)
        return HTMLResponse(page, status_code=status, headers=HEADERS)

    def session_of(request):
        return console.accounts.session(request.cookies.get(COOKIE))

    def require(request, right, page=True):
        s = session_of(request)
        if s is None:
            if page:
                nxt = request.url.path + ("?" + request.url.query if request.url.query else "")
                raise Denied(RedirectResponse("/login?next=" + urllib.parse.quote(nxt), status_code=303))
            raise Denied(PlainTextResponse("login needed", status_code=401, headers=HEADERS))
        if not s.can(right):
            console.accounts.audit(s.username, _source(request), "forbidden", "%s %s" % (request.method, request.url.path))
            raise Denied(PlainTextResponse(i18n.t(lang_of(request), "forbidden"), status_code=403, headers=HEADERS))
        return s

    async def form_with_csrf(request, session):
        form = await request.form()
        if not csrf_ok(session, form.get("csrf")):
            console.accounts.audit(session.username, _source(request), "csrf_refused", request.url.path)
            raise Denied(PlainTextResponse(i18n.t(lang_of(request), "csrf"), status_code=403, headers=HEADERS))
        return form

    def guarded(right, page=True):
        def wrap(fn):
            async def endpoint(request):
                try:
                    session = require(request, right, page)
                    return await fn(request, session)
                except Denied as d:
                    return d.response
            endpoint.__name__ = fn.__name__
            return endpoint
        return wrap

    # -- login --------------------------------------------------------------------------------------

    async def login_page(request):
        token = request.cookies.get(LOGIN_CSRF) or secrets.token_urlsafe(24)
        resp = render(request, "login.html", None, login_csrf=token, error=None,
                      next=_safe_next(request.query_params.get("next")), offset=0)
        resp.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict", secure=console.tls, max_age=3600)
        return resp

    async def login_post(request):
        form = await request.form()
        cookie = request.cookies.get(LOGIN_CSRF)
        if not cookie or not form.get("csrf") or not secrets.compare_digest(cookie, form.get("csrf")):
            return PlainTextResponse(i18n.t(lang_of(request), "csrf"), status_code=403, headers=HEADERS)
        lang = lang_of(request)
        nxt = _safe_next(form.get("next"))
        try:
            s = await run_in_threadpool(console.accounts.login, form.get("username", ""), form.get("password", ""),
                                        _source(request))
        except LockedOut as exc:
            console.metrics.inc("fengqiao_console_logins_total", {"result": "locked"})
            return render(request, "login.html", None, status=429, login_csrf=cookie, next=nxt, offset=0,
                          error=i18n.t(lang, "locked", exc.retry_after_s))
        except LoginFailed:
            console.metrics.inc("fengqiao_console_logins_total", {"result": "failed"})
            return render(request, "login.html", None, status=401, login_csrf=cookie, next=nxt, offset=0,
                          error=i18n.t(lang, "login_failed"))
        console.metrics.inc("fengqiao_console_logins_total", {"result": "ok"})
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, s.token, httponly=True, samesite="strict", secure=console.tls,
                        max_age=int(s.expires_at - time.time()), path="/")
        resp.delete_cookie(LOGIN_CSRF, httponly=True, samesite="strict", secure=console.tls)
        return resp

    @guarded("read")
    async def logout(request, session):
        await form_with_csrf(request, session)
        console.accounts.logout(session.token)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=console.tls)
        return resp

    async def set_lang(request):
        to = request.query_params.get("to")
        resp = RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
        if to in i18n.LANGS:
            resp.set_cookie(LANG, to, samesite="strict", max_age=365 * 86400, secure=console.tls)
        return resp

    # -- the board and the live stream -----------------------------------------------------------------

    @guarded("read")
    async def board(request, session):
        rows = await run_in_threadpool(console.views.board)
        recent = [summary(e) for e in console.hub.recent(15)]
        return render(request, "board.html", session, rows=rows, head=console.hub.seen, page="board", recent=recent)

    @guarded("read", page=False)
    async def board_rows(request, session):
        # ?after=N: only the open cases opened after case N, for the page to insert in place; a
        # few rows instead of the whole board on each new alarm (issue 12's 100 alarms/s).
        after = request.query_params.get("after")
        if after is not None:
            try:
                after = int(after)
            except ValueError:
                after = -1
            if not 0 <= after < 2 ** 63:        # beyond SQLite's integers the query would fail (500)
                return PlainTextResponse("after=<case id>", status_code=400, headers=HEADERS)
        rows = await run_in_threadpool(console.views.board, after)
        if after is not None and not rows:
            # nothing new (the template would render the "no open cases" row, which is not news)
            return Response(status_code=204, headers=HEADERS)
        return render(request, "board_rows.html", session, rows=rows)

    @guarded("read", page=False)
    async def events(request, session):
        try:
            after = int(request.headers.get("last-event-id") or request.query_params.get("after") or console.hub.seen)
        except ValueError:
            after = console.hub.seen

        async def read_store(a, limit):
            return await run_in_threadpool(console.store.events_after, a, limit)

        async def stream():
            yield "retry: 1000\n\n"
            async for ev in console.hub.follow(after, read_store):
                if ev is None:
                    yield ": keep-alive\n\n"
                else:
                    yield "id: %d\nevent: fq\ndata: %s\n\n" % (ev.event_id, json.dumps(summary(ev)))

        return EventStream(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- cases -------------------------------------------------------------------------------------------

    @guarded("read")
    async def case_page(request, session):
        case_id = int(request.path_params["case_id"])
        try:
            case = await run_in_threadpool(console.views.case, case_id)
        except CaseNotFound:
            return render(request, "error.html", session, status=404, message="no case %d" % case_id)
        people = await run_in_threadpool(console.views.people)
        teams = await run_in_threadpool(console.views.teams)
        return render(request, "case.html", session, case=case, people=people, teams=teams, head=console.hub.seen,
                      page="case")

    def action(name):
        @guarded("act")
        async def do(request, session):
            case_id = int(request.path_params["case_id"])
            form = await form_with_csrf(request, session)
            actor = session.person_id or "console:" + session.username
            lang = lang_of(request)
            try:
                await run_in_threadpool(console.act, name, case_id, actor, form)
                flashes[session.token] = ("ok", i18n.t(lang, "done_" + name))
                console.accounts.audit(session.username, _source(request), "case_" + name, str(case_id))
            except CaseError as exc:
                flashes[session.token] = ("error", i18n.t(lang, "case_busy", str(exc)))
            return RedirectResponse("/case/%d" % case_id, status_code=303)
        do.__name__ = "case_" + name
        return do

    # -- devices, patrol, history, users -------------------------------------------------------------

    @guarded("read")
    async def devices(request, session):
        return render(request, "devices.html", session, page="devices", head=console.hub.seen,
                      **(await _devices_ctx(request)))

    @guarded("read", page=False)
    async def devices_rows(request, session):
        return render(request, "devices_rows.html", session, **(await _devices_ctx(request)))

    async def _devices_ctx(request):
        q = request.query_params
        f = {k: q.get(k) or None for k in ("village", "grid", "state", "role")}
        if f["state"] not in (None, "offline", "online", "battery_low", "tamper", "revoked"):
            f["state"] = None
        rows = await run_in_threadpool(lambda: console.views.devices(**f))
        areas = await run_in_threadpool(console.views.areas)
        return {"rows": rows, "areas": areas, "f": f, "now": time.time()}

    @guarded("read")
    async def patrol(request, session):
        village = request.query_params.get("village") or None
        date, rounds, summaries = await run_in_threadpool(console.views.patrol_today, village)
        areas = [a for a in await run_in_threadpool(console.views.areas) if a[2] == "village"]
        return render(request, "patrol.html", session, page="patrol", date=date, rounds=rounds,
                      summaries=summaries, village=village, areas=areas, head=console.hub.seen)

    @guarded("read")
    async def patrol_report(request, session):
        from gateway.reports.cli import patrol_csv, patrol_html
        from gateway.reports.build import patrol_report as build

        fmt = request.path_params["fmt"]
        if fmt not in ("csv", "html"):
            return PlainTextResponse("patrol.csv or patrol.html", status_code=404, headers=HEADERS)
        village = request.query_params.get("village") or None
        d = console.views.directory()
        if d is None:
            return PlainTextResponse("no village configuration", status_code=404)
        try:
            date = datetime.date.fromisoformat(request.query_params.get("date", ""))
        except ValueError:
            return PlainTextResponse("date=YYYY-MM-DD", status_code=400)
        rows, summaries = await run_in_threadpool(build, console.patrol, d, date, village, console.clock.now())
        name = "patrol-%s%s" % (date.isoformat(), "-" + village if village else "")
        if fmt == "csv":
            return Response(patrol_csv(rows), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": 'attachment; filename="%s.csv"' % name})
        return HTMLResponse(patrol_html(rows, summaries, d, date, village),
                            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    @guarded("read")
    async def history(request, session):
        q = request.query_params
        off = console.views.offset()
        today = datetime.datetime.fromtimestamp(console.clock.now() + off, tz=datetime.timezone.utc).date()
        try:
            since = datetime.date.fromisoformat(q.get("from") or (today - datetime.timedelta(days=7)).isoformat())
            until = datetime.date.fromisoformat(q.get("to") or today.isoformat())
            level = int(q["level"]) if q.get("level") else None
        except ValueError:
            since, until, level = today - datetime.timedelta(days=7), today, None
        f = {"village": q.get("village") or None, "level": level, "outcome": q.get("outcome") or None,
             "status": q.get("status") or None}
        rows, summ = await run_in_threadpool(lambda: console.views.history(since, until, **f))
        areas = [a for a in await run_in_threadpool(console.views.areas) if a[2] == "village"]
        return render(request, "history.html", session, page="history", rows=rows, summary=summ, since=since,
                      until=until, f=f, areas=areas)

    @guarded("manage")
    async def users(request, session):
        return render(request, "users.html", session, page="users", users=console.accounts.users())

    @guarded("manage")
    async def user_disable(request, session):
        form = await form_with_csrf(request, session)
        name = request.path_params["username"]
        try:
            console.accounts.disable(name, form.get("enable") != "1")
        except AccountError as exc:
            return render(request, "error.html", session, status=404, message=str(exc))
        console.accounts.audit(session.username, _source(request), "user_disable" if form.get("enable") != "1"
                               else "user_enable", name)
        return RedirectResponse("/users", status_code=303)

    async def metrics(request):
        body = await run_in_threadpool(console.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    routes = [
        Route("/login", login_page, methods=["GET"]), Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/lang", set_lang),
        Route("/", board), Route("/board/rows", board_rows), Route("/events", events),
        Route("/case/{case_id:int}", case_page),
        *[Route("/case/{case_id:int}/%s" % n, action(n), methods=["POST"]) for n in ("ack", "dispatch", "note", "close")],
        Route("/devices", devices), Route("/devices/rows", devices_rows), Route("/patrol", patrol),
        Route("/reports/patrol.{fmt:str}", patrol_report), Route("/history", history),
        Route("/users", users), Route("/users/{username}/disable", user_disable, methods=["POST"]),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=HERE + "/static"), name="static"),
    ]
    return Starlette(routes=routes)


def _source(request):
    return request.client.host if request.client else None


def _safe_next(value):
    """Only a path on this site (no //host, no scheme): an open redirect is a phishing tool."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
