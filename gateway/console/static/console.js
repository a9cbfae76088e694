// Fengqiao duty console: the live stream, row refreshes, ages and countdowns, sound and title flash.
// Plain JS, no build step. Text from events goes in with textContent only (never innerHTML); HTML
// fragments come from the server's autoescaped templates.
"use strict";
(function () {
  var body = document.body;
  var page = body.dataset.page;
  var fq = window.__fq = { ids: [], visible: {}, connected: false, opens: 0 };
  var seen = {};

  document.querySelectorAll("#board-rows tr[data-case]").forEach(function (tr) { seen[tr.dataset.case] = true; });

  // -- ages and countdowns -----------------------------------------------------------------------
  function fmt(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + ("0" + (s % 60)).slice(-2) + "s";
    return Math.floor(s / 3600) + "h" + ("0" + Math.floor((s % 3600) / 60)).slice(-2) + "m";
  }
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll(".age[data-t]").forEach(function (el) { el.textContent = fmt(now - parseFloat(el.dataset.t)); });
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (el) {
      var left = parseFloat(el.dataset.deadline) - now;
      el.textContent = left > 0 ? fmt(left) : "0s";
      el.classList.toggle("due", left < 60);
    });
  }
  tick();
  setInterval(tick, 1000);

  // -- sound and title flash for a new alarm -------------------------------------------------------
  var flashTimer = null, audio = null;
  function beep() {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      [0, 0.35].forEach(function (at) {
        var o = audio.createOscillator(), g = audio.createGain();
        o.frequency.value = 880; o.connect(g); g.connect(audio.destination);
        g.gain.setValueAtTime(0.25, audio.currentTime + at);
        o.start(audio.currentTime + at); o.stop(audio.currentTime + at + 0.25);
      });
      fq.beeps = (fq.beeps || 0) + 1;
    } catch (e) { fq.beepError = String(e); }
  }
  function flashTitle() {
    var base = body.dataset.title, alt = "【" + body.dataset.newAlarm + "】" + base, n = 0;
    if (flashTimer) clearInterval(flashTimer);
    flashTimer = setInterval(function () {
      document.title = (n++ % 2) ? base : alt;
      if (n > 20 && document.hasFocus()) { clearInterval(flashTimer); flashTimer = null; document.title = base; }
    }, 500);
    document.title = alt;
  }

  // -- fragments: refetch a table body, at most one request in flight (coalesced) -----------------------
  // The board's order, as views.Views.board sorts it (open before acknowledged, level 5 first, the
  // oldest first, then the case id): a row fetched on its own (?after=) goes where a full refetch
  // would put it. data-opened is the server's repr of the float, so equal times compare equal.
  function boardKey(tr) {
    return [tr.dataset.status === "open" ? 0 : 1, -parseInt(tr.dataset.level, 10), parseFloat(tr.dataset.opened),
            parseInt(tr.dataset.case, 10)];
  }
  function sortsBefore(a, b) {
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] < b[i];
    return false;
  }
  function place(el, tr) {
    var key = boardKey(tr), rows = el.querySelectorAll("tr[data-case]");
    for (var i = 0; i < rows.length; i++) {
      if (sortsBefore(key, boardKey(rows[i]))) { el.insertBefore(tr, rows[i]); return; }
    }
    el.appendChild(tr);
  }
  function rowsIn(el) { return el.querySelectorAll("tr[data-case]"); }
  function caseIds(el) {
    var ids = [];
    rowsIn(el).forEach(function (tr) { ids.push(parseInt(tr.dataset.case, 10)); });
    return ids;
  }
  // Case ids only grow, and every open case up to maxCase has been in some answer: a new case is
  // one above it. Kept from the answers, so a closed top case does not make it go down.
  var boardRows = document.getElementById("board-rows");
  var maxCase = boardRows ? Math.max.apply(null, [0].concat(caseIds(boardRows))) : 0;
  fq.fetches = { full: 0, "new": 0 };

  function shown(el) {
    var now = Date.now() / 1000;
    rowsIn(el).forEach(function (tr) {
      var c = tr.dataset.case;
      if (!seen[c]) { seen[c] = true; fq.visible[c] = now - parseFloat(tr.dataset.opened); }
      maxCase = Math.max(maxCase, parseInt(c, 10));
    });
    var count = document.getElementById("open-count");
    if (count) count.textContent = rowsIn(el).length;
    tick();
  }
  // The whole fragment. A row above `sentMax` (the highest case when the request went out) that the
  // answer lacks was put in by a new-only fetch while this one was out, so it is newer than this
  // answer and stays. (Were it closed before the answer was made, the case_closed event brings
  // another full refetch, sent after the close and with that case below its sentMax.)
  function replaceRows(el, html, sentMax) {
    var newer = [];
    rowsIn(el).forEach(function (tr) { if (parseInt(tr.dataset.case, 10) > sentMax) newer.push(tr); });
    el.innerHTML = html;
    newer.forEach(function (tr) {
      if (el.querySelector('tr[data-case="' + tr.dataset.case + '"]')) return;
      el.querySelectorAll("tr.empty").forEach(function (x) { x.remove(); });
      place(el, tr);
    });
  }
  // Only the rows of cases opened after sentMax, each put in its place. A row already shown is left
  // as it is: its changes come with their own case events, whose full refetch is the one source of
  // a row's state (full answers arrive in order; a new-only answer may be older than one of them).
  // The caller drops a new-only answer whose request went out before the last full answer's: its
  // rows may be older than that answer (a case it left out as closed would come back).
  function insertRows(el, html) {
    var tb = document.createElement("tbody");
    tb.innerHTML = html;
    Array.prototype.slice.call(tb.querySelectorAll("tr[data-case]")).forEach(function (tr) {
      if (el.querySelector('tr[data-case="' + tr.dataset.case + '"]')) return;
      el.querySelectorAll("tr.empty").forEach(function (x) { x.remove(); });
      place(el, tr);
    });
  }

  // refresher(id, minGapMs, newOnly): a function that refetches the table body `id` (its data-src),
  // one request in flight, calls during one coalesced into one more after it; requests at least
  // minGapMs apart (start to start), a later call waits for the gap. newOnly: ?after=maxCase.
  var sentCount = 0, fullSent = 0;     // requests numbered as sent; the number of the last full answer shown
  function refresher(id, minGapMs, newOnly) {
    var el = document.getElementById(id);
    if (!el) return function () {};
    var busy = false, again = false, last = 0, timer = null;
    function run() {
      if (busy) { again = true; return; }
      var wait = last + minGapMs - Date.now();
      if (wait > 0) {
        if (!timer) timer = setTimeout(function () { timer = null; run(); }, wait);
        return;
      }
      busy = true;
      last = Date.now();
      var sentMax = maxCase, src = el.dataset.src + (newOnly ? "?after=" + sentMax : ""), n = ++sentCount;
      fq.fetches[newOnly ? "new" : "full"]++;
      fetch(src, { credentials: "same-origin", headers: { "Accept": "text/html" } }).then(function (r) {
        if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return null; }
        return r.ok && r.status !== 204 ? r.text() : null;      // 204: no case opened after sentMax
      }).then(function (html) {
        if (html === null) return;
        if (newOnly && n < fullSent) { again = true; return; }     // maybe older than the board shown: ask again
        if (newOnly) insertRows(el, html); else { replaceRows(el, html, sentMax); fullSent = n; }
        shown(el);
      }).catch(function (e) {
        // the request failed (network gone, server restarting): the next event refetches, and
        // the stream's banner tells the officer meanwhile
        fq.fetchError = String(e);
      }).then(function () {
        busy = false;
        if (again) { again = false; run(); }
      });
    }
    return run;
  }
  var refreshBoard = refresher("board-rows", 1000, false), refreshNew = refresher("board-rows", 0, true);
  var refreshDevices = refresher("device-rows", 0, false);

  // -- the live stream ----------------------------------------------------------------------------------
  if (!body.dataset.head) return;
  var banner = document.getElementById("banner");
  var live = document.getElementById("live");
  var caseTitle = document.getElementById("case-title");
  var downSince = null;
  function setDown(down) {
    fq.connected = !down;
    if (banner) banner.hidden = !down;
    body.classList.toggle("stream-down", down);
  }
  var lastId = body.dataset.head, es = null;
  function connect() {
    // The browser resumes by itself with Last-Event-ID; if it gives up (CLOSED), we open a new
    // stream from the last id we saw: either way the server sends everything after it.
    es = new EventSource("/events?after=" + encodeURIComponent(lastId));
    es.onopen = function () { fq.opens++; setDown(false); };
    es.onerror = function () {
      setDown(true);
      if (es.readyState === EventSource.CLOSED) {
        fetch("/board/rows", { credentials: "same-origin" }).then(function (r) {
          if (r.status === 401) location.href = "/login?next=" + encodeURIComponent(location.pathname);
          else setTimeout(connect, 1000);
        }, function () { setTimeout(connect, 1000); });
      }
    };
    es.addEventListener("fq", onEvent);
  }
  // The live list is redrawn at most every LIVE_EVERY_MS, with the events since: at 100 alarms/s
  // (~300 events/s) a redraw per event kept the browser laying out and painting the page at every
  // frame, CPU the gateway needs when both run on one machine; nobody reads 300 lines a second.
  var LIVE_EVERY_MS = 250, liveQueue = [], liveTimer = null;
  var clock = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "numeric", second: "numeric" });
  function showLive() {
    liveTimer = null;
    var batch = liveQueue.slice(-50), items = document.createDocumentFragment();
    liveQueue = [];
    for (var i = batch.length - 1; i >= 0; i--) {
      var ev = batch[i], li = document.createElement("li");
      li.dataset.id = ev.id;
      li.textContent = clock.format(new Date(ev.at * 1000)) + "  " + ev.kind +
        (ev.case_id ? "  #" + ev.case_id : "") + (ev.device ? "  " + ev.device : "") + (ev.actor && ev.actor !== "system" ? "  " + ev.actor : "");
      items.appendChild(li);
    }
    live.insertBefore(items, live.firstChild);
    while (live.children.length > 50) live.removeChild(live.lastChild);
  }
  function onEvent(msg) {
    var ev = JSON.parse(msg.data);
    lastId = ev.id;
    fq.ids.push(ev.id);
    if (live) {
      liveQueue.push(ev);
      if (!liveTimer) liveTimer = setTimeout(showLive, LIVE_EVERY_MS);
    }
    var k = ev.kind;
    // A new case: fetch only rows above maxCase (a few, at once). Any other case event changes a
    // row shown: the whole board, at most once a second (at 100 alarms/s each of their ~3 events
    // refetching the whole board kept a new row waiting behind fetches of hundreds of rows).
    if (page === "board" && (k === "case_opened" || k === "alarm")) refreshNew();
    else if (page === "board" && k.indexOf("case_") === 0) refreshBoard();
    if (page === "devices" && (k.indexOf("device_") === 0 || k === "tamper" || k === "battery_low")) refreshDevices();
    if (k === "case_opened") { beep(); flashTitle(); }
    if (caseTitle && ev.case_id && String(ev.case_id) === caseTitle.dataset.case && k !== "case_feedback") {
      // someone else acted on the case we are looking at: show it (the forms follow the new state)
      var note = document.getElementById("changed");
      if (!note) {
        note = document.createElement("p"); note.id = "changed"; note.className = "flash info";
        var a = document.createElement("a"); a.href = location.pathname; a.textContent = "↻ " + k;
        note.appendChild(a); caseTitle.parentNode.insertBefore(note, caseTitle.nextSibling);
      }
    }
  }
  connect();

  // -- one submit per form (a double click sends one request) ----------------------------------------------
  document.querySelectorAll("form.once").forEach(function (f) {
    f.addEventListener("submit", function () {
      f.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    });
  });
})();
