"""`fengqiao console screenshots DIR`: the console at phone (360 px) and desk (1366 px) widths.

A sample township is started in a temporary directory (the project's Mosquitto, the gateway
with the console, the sample village, CPython devices): a fire at the general store (level 5,
unacknowledged), a medical alarm at Li Xiuying's (acknowledged by the duty officer), a tampered
check-in point and a silent one. Debian's chromium, driven by Playwright, takes the pictures.
"""

import os
import tempfile

from gateway.console.testing import PASSWORD, Township
from protocol import frame as pframe
from tools.testing.procs import wait_for

CHROMIUM = "/usr/bin/chromium"
SIZES = {"desk": (1366, 860), "phone": (360, 780)}


def _stage(t):
    t.sim_button(0x203).alarm(kind=1)                                   # fire, LPG store: level 5
    t.sim_button(0x102).alarm(kind=2)                                   # medical, lives alone: level 4
    wait_for(lambda: len(t.cases.list_cases(status="open")) == 2, 20, "two cases open")
    medical = [c for c in t.cases.list_cases(status="open") if c["device_id"] == 0x102][0]
    t.cases.acknowledge(medical["case_id"], "p-chen-li", "on my way, 3 minutes")
    t.console._flush()
    t.sim_button(0x303).send(pframe.UP_TAMPER, (True,))
    sup = t.app.supervisor
    with sup._lock:
        sup.last_seen[0x304] = sup.last_seen.get(0x304, t.app.clock.now()) - 3600   # silent for an hour
    wait_for(lambda: 0x304 in sup.offline and 0x303 in sup.tamper_open, 20, "offline and tamper seen")
    return medical["case_id"]


def screenshots(out_dir, langs=("zh", "en")):
    from playwright.sync_api import sync_playwright

    os.makedirs(out_dir, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="fq-shots-") as work:
        t = Township(work, county=False).start()
        try:
            case_id = _stage(t)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                try:
                    for lang in langs:
                        for size, (w, h) in SIZES.items():
                            ctx = browser.new_context(viewport={"width": w, "height": h}, device_scale_factor=1,
                                                      locale="zh-CN" if lang == "zh" else "en-GB")
                            ctx.add_cookies([{"name": "fq_lang", "value": lang, "url": t.url}])
                            page = ctx.new_page()
                            page.goto(t.url + "/login")
                            page.fill("input[name=username]", "zhou")
                            page.fill("input[name=password]", PASSWORD)
                            page.click("button[type=submit]")
                            page.wait_for_function("() => window.__fq && window.__fq.connected")
                            for name, path in (("board", "/"), ("case", "/case/%d" % case_id), ("devices", "/devices")):
                                if lang != "zh" and name != "board":
                                    continue          # English: the board only (the other pages are alike)
                                if path != "/":
                                    page.goto(t.url + path)
                                    page.wait_for_function("() => window.__fq && window.__fq.connected")
                                page.wait_for_timeout(300)      # let the 1 s age/countdown tick paint once
                                f = os.path.join(out_dir, "console-%s-%s.%s.png" % (name, size, lang))
                                page.screenshot(path=f, full_page=(size == "phone"))
                                written.append(f)
                            ctx.close()
                finally:
                    browser.close()
        finally:
            t.stop()
    return written
