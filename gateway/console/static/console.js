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
  function refresher(id) {
    var el = document.getElementById(id);
    if (!el) return function () {};
    var busy = false, again = false;
    function run() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(el.dataset.src, { credentials: "same-origin", headers: { "Accept": "text/html" } }).then(function (r) {
        if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return null; }
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (html !== null) {
          el.innerHTML = html;
          var now = Date.now() / 1000;
          el.querySelectorAll("tr[data-case]").forEach(function (tr) {
            var c = tr.dataset.case;
            if (!seen[c]) { seen[c] = true; fq.visible[c] = now - parseFloat(tr.dataset.opened); }
          });
          var count = document.getElementById("open-count");
          if (count) count.textContent = el.querySelectorAll("tr[data-case]").length;
          tick();
        }
      }).catch(function () {}).then(function () {
        busy = false;
        if (again) { again = false; run(); }
      });
    }
    return run;
  }
  var refreshBoard = refresher("board-rows"), refreshDevices = refresher("device-rows");

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
  function onEvent(msg) {
    var ev = JSON.parse(msg.data);
    lastId = ev.id;
    fq.ids.push(ev.id);
    if (live) {
      var li = document.createElement("li");
      li.dataset.id = ev.id;
      li.textContent = new Date(ev.at * 1000).toLocaleTimeString() + "  " + ev.kind +
        (ev.case_id ? "  #" + ev.case_id : "") + (ev.device ? "  " + ev.device : "") + (ev.actor && ev.actor !== "system" ? "  " + ev.actor : "");
      live.insertBefore(li, live.firstChild);
      while (live.children.length > 50) live.removeChild(live.lastChild);
    }
    var k = ev.kind;
    if (page === "board" && (k.indexOf("case_") === 0 || k === "alarm")) refreshBoard();
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
