"""The executable README: every shell command the docs show runs here, in order, as written.

A small collector of fenced blocks (no plugin: the rules fit in this file):

- a ```sh block is run. All of one file's ```sh blocks run in ONE bash (`set -euo pipefail`, `set
  -x`), in document order, so `cd`, variables and background jobs carry from block to block. Each
  file runs in its own scratch directory holding links to the clone's gateway/, firmware/,
  protocol/ and tools/ (so `gateway/sample_village.toml` is there, and what the commands write is
  not in the clone), with the venv's `fengqiao` first on PATH and no FENGQIAO_* variables.
- the only change made to the text: the ports 1884 and 8883 become free ports, so the test can run
  beside other tests (and a gateway another engineer runs). The README says so.
- a ```console block is shown and not run; the paragraph just above it must say
  "Not run by the README test: <why>", so the reason is visible in the doc.
- a command word (fengqiao, make, python, ...) at the start of a line in an indented block, in a
  fence without a language or in ```text fails the test: commands live in ```sh or ```console.

Boards are host boards (`fengqiao hostboard start`); after each file every host board it started
is stopped, its shell's process group is ended, and any Mosquitto left by a gateway it ran is
stopped by the pid file under the scratch directory.
"""

import os
import re
import signal
import subprocess
import time

import pytest

from tools.testing.procs import REPO_ROOT, free_port

DOCS = ["README.md", "gateway/README.md", "firmware/boards/HOSTBOARD.md", "firmware/CONSOLE.md", "tools/DEPLOY.md"]
LINKED = ["gateway", "firmware", "protocol", "tools"]
COMMAND = re.compile(r"^\s*(\$ )?(fengqiao|make|python3?|micropython|mpremote|pytest|sudo|cp|mkdir|MICROPYPATH=)\b")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")
NOT_RUN = "Not run by the README test:"
# What each file's run must show (beyond exit status 0): the walk-through's alarm, case and revoke.
EXPECT = {
    # (strings or regular expressions; only what the docs promise, not other commands' wording)
    "README.md": ["| FENGQIAO alarm button", "device   00000101", "LED blue slow blink = stored at the township",
                  re.compile(r"^1\s+open\s.*\b00000101\s+hh-e01\b", re.M),  # the alarm in `case list`
                  "LED steady green = someone is coming", "device 00000101 revoked", "00000101 alarm    revoked"],
    "gateway/README.md": ["device 0000002a added", "device 0000002a revoked", "quick_check ok"],
    "firmware/boards/HOSTBOARD.md": ["console (pty)", "card 04a1b2c3d4e5f6 held to the reader",
                                     "flashed host board cp1", "host board cp1 stopped"],
    "tools/DEPLOY.md": ["2 rows: 2 done, 0 failed, 0 to do", "sheet.html", "1 rows: 1 done, 0 failed",
                        re.compile(r"00000102 alarm\s+hh-e02\s+registered"), re.compile(r"replaces 00000100 at hh-e01"),
                        re.compile(r"^00000100 alarm\s+revoked", re.M), re.compile(r"^00000102 alarm\s+revoked", re.M)],
}


def parse(path):
    """(fenced blocks, problems): blocks are dicts lang, line (1-based, of the fence), text, why."""
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, problems = [], []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].startswith("    ") and COMMAND.match(lines[i]) and not (i and lines[i - 1].rstrip().endswith("\\")):
                problems.append("%s:%d: a command in an indented block (put it in ```sh, or ```console with "
                                "the reason it is not run): %s" % (path, i + 1, lines[i].strip()))
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].lstrip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        para = []
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        while j >= 0 and lines[j].strip():
            para.insert(0, lines[j].strip())
            j -= 1
        text = " ".join(para)
        why = text.split(NOT_RUN, 1)[1].strip(" *") if NOT_RUN in text else None
        blocks.append({"lang": lang, "line": start + 1, "text": "\n".join(body), "why": why})
        if lang in ("bash", "shell", "shell-session", "zsh"):
            problems.append("%s:%d: ```%s: write ```sh (run by this test) or ```console (shown, with the reason it "
                            "is not run)" % (path, start + 1, lang))
        elif lang == "console" and not why:
            problems.append("%s:%d: a ```console block needs '%s <why>' in the paragraph above it"
                            % (path, start + 1, NOT_RUN))
        elif lang in ("", "text") and any(COMMAND.match(line) for line in body):
            problems.append("%s:%d: commands in a ```%s block: make it ```sh or ```console"
                            % (path, start + 1, lang))
    return blocks, problems


def script(path):
    """The bash script of one file's ```sh blocks, with free ports for 1884 and 8883."""
    blocks, _ = parse(path)
    parts = ["set -euo pipefail", "set -x"]
    for b in blocks:
        if b["lang"] == "sh":
            parts.append(": '=== %s line %d'" % (path, b["line"]))
            parts.append(b["text"])
    ports = {"1884": str(free_port()), "8883": str(free_port())}
    return re.sub(r"\b(1884|8883)\b", lambda m: ports[m.group(1)], "\n".join(parts) + "\n"), len(parts) > 2


def test_every_command_shown_is_run_or_says_why_not():
    problems = []
    runnable = {}
    for path in DOCS:
        blocks, found = parse(path)
        problems += found
        runnable[path] = sum(1 for b in blocks if b["lang"] == "sh")
    assert not problems, "\n".join(problems)
    assert runnable["README.md"] >= 5 and runnable["firmware/boards/HOSTBOARD.md"] >= 1


def test_doc_links_stay_in_the_repository():
    """Every relative link and `../path` of the repository's Markdown files names a file that is in
    the clone (nothing the user needs lives outside it); web addresses are left alone."""
    files = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    bad = []
    for path in (f for f in files if not f.startswith("vendor/")):
        with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
            text = f.read()
        links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"`(\.\./[^`\s]+)`", text)
        for link in links:
            if re.match(r"[a-z][a-z0-9+.-]*:", link) or link.startswith("#"):
                continue
            target = os.path.normpath(os.path.join(os.path.dirname(path), link.split("#")[0]))
            if link.startswith("/") or target.startswith("..") or not os.path.exists(os.path.join(REPO_ROOT, target)):
                bad.append("%s: %s" % (path, link))
    assert not bad, "links to nothing in the repository:\n" + "\n".join(bad)


def _stop_everything(scratch, session_pid):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENGQIAO_")}
    for root, dirs, _files in os.walk(scratch, followlinks=False):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        if os.path.basename(root) == "hostboards":
            subprocess.run([os.path.join(REPO_ROOT, ".venv", "bin", "fengqiao"), "hostboard", "stop", "--all"],
                           env=dict(env, FENGQIAO_HOSTBOARDS=root), capture_output=True, timeout=60)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(session_pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(session_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    for root, dirs, files in os.walk(scratch, followlinks=False):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        if "mosquitto.pid" in files:
            try:
                with open(os.path.join(root, "mosquitto.pid")) as f:
                    pid = int(f.read().strip())
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    mine = b"mosquitto" in f.read() and True
            except (OSError, ValueError):
                continue
            if mine:
                os.kill(pid, signal.SIGTERM)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("path", DOCS)
def test_doc_runs_as_written(path, tmp_path):
    text, has_commands = script(path)
    if not has_commands:
        assert path not in EXPECT
        return  # (firmware/CONSOLE.md shows console frames, not shell commands)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for name in LINKED:
        os.symlink(os.path.join(REPO_ROOT, name), scratch / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENGQIAO_")}
    env["PATH"] = os.path.join(REPO_ROOT, ".venv", "bin") + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen(["bash", "-c", text], cwd=str(scratch), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        _stop_everything(str(scratch), proc.pid)
        out, _ = proc.communicate()
        pytest.fail("%s did not finish within 200 s:\n%s" % (path, out.decode(errors="replace")[-4000:]))
    finally:
        _stop_everything(str(scratch), proc.pid)
    out = out.decode(errors="replace")
    assert proc.returncode == 0, "%s failed (status %d), the last commands:\n%s" % (path, proc.returncode, out[-4000:])
    missing = [getattr(s, "pattern", s) for s in EXPECT.get(path, ())
               if (s.search(out) is None if hasattr(s, "search") else s not in out)]
    assert not missing, "%s ran, but its output lacks %s:\n%s" % (path, missing, out[-4000:])


def test_console_doc_one_liner_computes_its_example_frame():
    """firmware/CONSOLE.md shows its one shell command inline (`python3 -c ...`, to compute a frame
    by hand), not in a ```sh block: it is run here, and must print the example session's first
    request frame exactly."""
    with open(os.path.join(REPO_ROOT, "firmware/CONSOLE.md"), encoding="utf-8") as f:
        text = f.read()
    (command,) = re.findall(r"`(python3 -c [^`]+)`", text)
    frame = re.search(r"^\s+> (FQ1 \{\"id\": 1, \"cmd\": \"identify\"\} [0-9a-f]{8})$", text, re.M).group(1)
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == frame, (proc.stdout, proc.stderr)
