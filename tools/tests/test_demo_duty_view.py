"""The demo's duty view in the terminal (issue 16): it lists the open cases and the offline devices,
is printed when that changes (not on every heartbeat: no counter grows with them), and the README
states its intervals as the code has them."""

import io
import os
import re

from tools.demo import DUTY_CHECK_S, DUTY_EVERY_S, Demo, Narrator
from tools.testing.procs import REPO_ROOT


class _Cases:
    def __init__(self):
        self.cases = []

    def list_cases(self):
        return list(self.cases)


class _App:
    class supervisor:  # noqa: N801 (the attribute the demo reads)
        offline = set()


class _Steps:
    """stop.wait(): runs the next step (what happened in the village meanwhile), True when done."""

    def __init__(self, steps):
        self.steps = list(steps)

    def wait(self, _timeout):
        if not self.steps:
            return True
        self.steps.pop(0)()
        return False


def _demo(cases):
    out = io.StringIO()
    demo = Demo("unused", narrator=Narrator(out))
    demo.app = _App()
    _App.supervisor.offline = set()
    demo.plugin_cases = lambda: cases
    demo.boards = {0x101: None, 0x102: None, 0x201: None}
    demo.places = {0x101: "hh-e01", 0x102: "hh-e02", 0x201: "cp-gate"}
    return demo, out


def _views(text):
    return [v for v in re.split(r"\n(?===== duty view)", text) if v.startswith("==== duty view")]


def test_lists_open_cases_and_offline_devices_and_prints_only_on_change():
    cases = _Cases()
    demo, out = _demo(cases)

    def alarm():
        cases.cases = [{"case_id": 1, "place_id": "hh-e01", "status": "open", "escalated_to": None}]

    def escalated_and_offline():
        cases.cases = [{"case_id": 1, "place_id": "hh-e01", "status": "open", "escalated_to": "township"},
                       {"case_id": 2, "place_id": "hh-e02", "status": "closed", "escalated_to": None}]
        _App.supervisor.offline = {0x201}

    def heartbeat():
        pass  # heartbeats and other events that change neither list

    demo.duty_view(_Steps([heartbeat, alarm, heartbeat, heartbeat, escalated_and_offline, heartbeat, heartbeat]),
                   check_s=DUTY_CHECK_S, every_s=3600)
    views = _views(out.getvalue())
    assert len(views) == 3, out.getvalue()  # at the start, and at each of the two changes
    assert "3 devices: 3 online, 0 offline | 0 open case(s)" in views[0]
    assert "case 1 at hh-e01: open\n" in views[1] and "1 open case(s)" in views[1]
    assert "case 1 at hh-e01: open, escalated to township" in views[2]
    assert "case 2" not in views[2]  # closed: not listed
    assert "3 devices: 2 online, 1 offline | 1 open case(s)" in views[2]
    assert "offline: device 00000201 at cp-gate" in views[2]
    assert "event" not in out.getvalue()  # no event counter (it grew with every heartbeat)


def test_printed_again_at_least_every_every_s_when_nothing_changes():
    demo, out = _demo(_Cases())
    demo.duty_view(_Steps([lambda: None] * 3), check_s=DUTY_CHECK_S, every_s=0)
    assert len(_views(out.getvalue())) == 4


def test_readme_states_the_duty_view_intervals_of_the_code():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    assert "checked every %g s and printed when they change and at least every %g s" % (DUTY_CHECK_S, DUTY_EVERY_S) \
        in readme
    demo, out = _demo(_Cases())
    demo.duty_view(_Steps([]))
    assert "checked every %g s, printed when it changes and at least every %g s" % (DUTY_CHECK_S, DUTY_EVERY_S) \
        in out.getvalue()
