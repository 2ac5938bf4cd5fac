/* Run page: poll progress.json while the run is active, update the numbers and redraw the
 * loss/accuracy charts from the metric series; reload once when the run becomes final so its
 * artifacts, log and plots appear. Without JavaScript the page still shows the last state. */
(function () {
  "use strict";
  var root = document.getElementById("progress");
  if (!root || !window.H3Charts) return;
  var url = root.dataset.progressUrl;
  var log = document.querySelector("pre.log[tabindex]");
  if (log) log.scrollTop = log.scrollHeight; // it is a tail: show the last lines first
  var loadedActive = root.dataset.active === "1";
  var cursor = 0;
  var series = {};
  var charts = Array.prototype.slice.call(document.querySelectorAll(".chart[data-series]"));

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

  function merge(incoming) {
    Object.keys(incoming).forEach(function (name) {
      var list = series[name] || (series[name] = []);
      Array.prototype.push.apply(list, incoming[name]);
      list.sort(function (a, b) { return a[0] - b[0]; });
    });
  }

  function draw() {
    charts.forEach(function (chart) {
      var names = chart.dataset.series.split(" ");
      var labels = (chart.dataset.labels || "").split("|");
      H3Charts.lineChart(chart, names.map(function (n, i) {
        return { label: labels[i] || n, points: series[n] || [], color: H3Charts.PALETTE[i] };
      }), { ylabel: chart.dataset.ylabel, ymax: chart.dataset.ymax ? +chart.dataset.ymax : undefined, ymin: 0 });
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
    fetch(url + "?after=" + cursor, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
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
  poll();
})();
