"""The duty console in `make demo` (tools/demo.py's DEMO_SERVICES): started on the demo's running
gateway, with one officer account, its URL and login printed in the story's set-up."""

import socket

DEMO_USER, DEMO_PASSWORD, DEMO_PERSON = "duty", "duty-demo-2026", "p-zhou-min"
PORT = 8470


def _port():
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", PORT))
            return PORT
        except OSError:   # taken (another demo?): any free port
            return 0


def start(demo):
    from gateway.console import attach
    from gateway.console.accounts import AccountError

    console = attach(demo.app, port=_port())
    try:
        console.accounts.add_user(DEMO_USER, DEMO_PASSWORD, "officer", person_id=DEMO_PERSON)
    except AccountError:   # an account kept from an earlier run of the same workdir
        pass
    demo.n.say("duty console: %s  (log in as %s / %s, the township duty officer Zhou Min)"
               % (console.url, DEMO_USER, DEMO_PASSWORD))
    return console


def board_lists_case(console, case_id):
    """Log in over HTTP as the demo officer and fetch the alarm board, as a browser would: True
    when the board links to case `case_id` (what the demo says to show the console is live)."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(console.url.rstrip("/") + "/login", timeout=10).read().decode()
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": DEMO_USER, "password": DEMO_PASSWORD, "csrf": token, "next": "/"})
    board = opener.open(console.url.rstrip("/") + "/login", data=form.encode(), timeout=10).read().decode()
    return ('href="/case/%d"' % case_id) in board
