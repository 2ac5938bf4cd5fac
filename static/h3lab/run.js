/* Run page: poll progress.json while the run is active, update the numbers and redraw the
 * charts; poll log.json for the live tail of train.log; reload once when the run becomes final
 * so its artifacts and plots appear. The charts draw any recorded metric (a picker per chart,
 * fed by series.json), with a shared log-scale toggle and smoothing slider. Without
 * JavaScript the page still shows the last state and the log. */
(function () {
  "use strict";
  var root = document.getElementById("progress");
  if (!root || !window.H3Charts) return;
  var url = root.dataset.progressUrl;
  var log = document.querySelector("pre.log[data-log]");
  if (log) log.scrollTop = log.scrollHeight; // it is a tail: show the last lines first
  var loadedActive = root.dataset.active === "1";
  var cursor = 0;
  var series = {};   // name -> [[step, value], ...]
  var fetched = {};  // names series.json has answered for
  var polls = 0;
  var grid = document.getElementById("run-charts");
  var seriesUrl = grid ? grid.dataset.seriesUrl : null;
  var charts = Array.prototype.slice.call(document.querySelectorAll(".chart[data-metric]"));
  var pickers = Array.prototype.slice.call(document.querySelectorAll("select[data-metric-picker]"));
  var logScale = document.getElementById("log-scale");
  var smoothing = document.getElementById("smoothing");
  var smoothingValue = document.getElementById("smoothing-value");
  var groups = [];
  // Series progress.json sends incrementally; others are re-read from series.json.
  var LIVE = ["train_loss", "test_loss", "train_accuracy", "test_accuracy"];

  function field(name) { return root.querySelector('[data-field="' + name + '"]') || document.querySelector('[data-field="' + name + '"]'); }
  function set(name, text) { var node = field(name); if (node) node.textContent = text; }
  function pct(v) { return v === null || v === undefined ? "—" : (100 * v).toFixed(1) + "%"; }
  function num(v) { return v === null || v === undefined ? "—" : H3Charts.format(v); }
  function duration(s) {
    s = Math.round(s);
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60); s %= 60;
    if (m < 60) return m + "m " + String(s).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }
  function getJSON(u) {
    return fetch(u, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); });
  }

  function merge(incoming) {
    Object.keys(incoming).forEach(function (name) {
      var list = series[name] || (series[name] = []);
      var seen = {};
      list.forEach(function (p) { seen[p[0]] = true; });
      incoming[name].forEach(function (p) { if (!seen[p[0]]) list.push(p); });
      list.sort(function (a, b) { return a[0] - b[0]; });
    });
  }

  function groupNames(key) {
    var g = groups.filter(function (x) { return x.key === key; })[0];
    if (g) return g.names;
    return ["train_" + key, "test_" + key, key];
  }

  function draw() {
    charts.forEach(function (chart) {
      var key = chart.dataset.metric;
      var names = groupNames(key);
      var accuracy = /accuracy$/.test(key);
      var title = document.getElementById(chart.id + "-title");
      if (title) title.textContent = key.charAt(0).toUpperCase() + key.slice(1).replace(/_/g, " ");
      H3Charts.lineChart(chart, names.map(function (n, i) {
        return { label: H3Charts.splitLabel(n), points: series[n] || [], color: H3Charts.PALETTE[i] };
      }), {
        ylabel: key.replace(/_/g, " "),
        ymax: accuracy ? 1 : undefined,
        ymin: accuracy || /loss$/.test(key) ? 0 : undefined,
        logY: logScale && logScale.checked,
        smoothing: smoothing ? +smoothing.value : 0,
        empty: "No points of " + key + " yet.",
      });
    });
  }

  function fillPickers() {
    pickers.forEach(function (select) {
      var chart = document.getElementById(select.dataset.metricPicker);
      var current = chart.dataset.metric;
      var keys = groups.map(function (g) { return g.key; });
      if (keys.indexOf(current) < 0) keys.unshift(current);
      select.textContent = "";
      keys.forEach(function (k) {
        var opt = document.createElement("option");
        opt.value = k;
        opt.textContent = k;
        opt.selected = k === current;
        select.appendChild(opt);
      });
    });
  }

  // Ask series.json for these names (all of them again when refresh is set).
  function load(names, refresh) {
    var want = names.filter(function (n) { return refresh || !fetched[n]; });
    if (!seriesUrl || (!want.length && groups.length)) return Promise.resolve();
    var q = want.map(function (n) { return "name=" + encodeURIComponent(n); }).join("&");
    return getJSON(seriesUrl + (q ? "?" + q : "")).then(function (d) {
      groups = H3Charts.metricGroups(d.names);
      want.forEach(function (n) { fetched[n] = true; if (refresh) delete series[n]; });
      merge(d.series);
      if (!cursor) cursor = d.cursor;
      fillPickers();
    });
  }

  function shownNames() {
    var out = [];
    charts.forEach(function (c) { out = out.concat(groupNames(c.dataset.metric)); });
    return out;
  }

  pickers.forEach(function (select) {
    select.addEventListener("change", function () {
      var chart = document.getElementById(select.dataset.metricPicker);
      chart.dataset.metric = select.value;
      if (chart.h3Chart) chart.h3Chart.domain = null; // a new metric starts unzoomed
      load(groupNames(select.value)).then(draw);
    });
  });
  if (logScale) logScale.addEventListener("change", draw);
  if (smoothing) {
    smoothing.addEventListener("input", function () {
      if (smoothingValue) smoothingValue.textContent = (+smoothing.value).toFixed(2);
      draw();
    });
  }

  function update(d) {
    set("stepline", "Step " + d.step + " / " + d.total_steps);
    set("eta", d.active && d.eta_s ? "ETA " + duration(d.eta_s) : "");
    var bar = field("bar");
    if (bar) {
      bar.style.width = (100 * d.fraction).toFixed(1) + "%";
      bar.className = "progress-fill progress-" + d.status;
      bar.parentNode.setAttribute("aria-valuenow", Math.round(100 * d.fraction));
    }
    set("loss", num(d.loss));
    set("accuracy", pct(d.accuracy));
    set("test_accuracy", pct(d.test_accuracy));
    set("tokens_per_s", d.tokens_per_s ? Math.round(d.tokens_per_s).toLocaleString() : "—");
    set("worker_host", d.worker_host || "—");
    set("device", d.device || "—");
    set("attempt", d.attempt);
    if (d.heartbeat_at) set("heartbeat_at", new Date(d.heartbeat_at).toLocaleTimeString([], { hour12: false }));
    var badge = document.querySelector("[data-status] .badge");
    if (badge && badge.textContent.trim() !== d.status) {
      badge.className = "badge badge-" + d.status;
      badge.textContent = d.status;
    }
  }

  function poll() {
    polls++;
    var others = shownNames().filter(function (n) { return LIVE.indexOf(n) < 0; });
    var refresh = loadedActive && others.length && polls % 5 === 0 ? load(others, true) : Promise.resolve();
    refresh.then(function () { return getJSON(url + "?after=" + cursor); })
      .then(function (d) {
        merge(d.series);
        cursor = d.cursor;
        update(d);
        draw();
        if (d.active) schedule(document.hidden ? 5000 : 1000);
        else if (loadedActive) window.location.reload();
      })
      .catch(function () { if (loadedActive) schedule(5000); });
  }

  function schedule(ms) { window.setTimeout(poll, ms); }

  // The live log: append the lines that are new since the last answer, so a screen reader
  // (aria-live on the <pre>) announces only those.
  var panel = document.getElementById("log-panel");
  var shown = log ? log.textContent.replace(/\n$/, "").split("\n").filter(function (l, i, a) { return a.length > 1 || l; }) : [];
  function pollLog() {
    getJSON(panel.dataset.logUrl + "?lines=200").then(function (d) {
      if (log && d.lines.length) {
        var last = shown.length ? shown[shown.length - 1] : null;
        var at = last === null ? -1 : d.lines.lastIndexOf(last);
        var fresh = at >= 0 ? d.lines.slice(at + 1) : d.lines;
        if (at < 0) log.textContent = "";
        var stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        if (fresh.length) log.appendChild(document.createTextNode(fresh.join("\n") + "\n"));
        shown = d.lines;
        if (stick || at < 0) log.scrollTop = log.scrollHeight;
        var note = panel.querySelector("[data-log-note]");
        if (note) note.textContent = "Live: the last lines of the worker's train.log, refreshed every few seconds.";
      }
      if (d.active) window.setTimeout(pollLog, document.hidden ? 10000 : 2000);
    }).catch(function () { window.setTimeout(pollLog, 10000); });
  }
  if (panel && panel.dataset.active === "1") window.setTimeout(pollLog, 2000);

  load(LIVE).then(function () { return load(shownNames()); }).then(draw).catch(function () {}).then(poll);
})();
