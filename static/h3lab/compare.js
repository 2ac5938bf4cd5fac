/* Compare page: per run (one colour each) its test curve solid and its train curve dashed, for
 * any recorded metric (a picker per chart), with the run page's log-scale toggle, smoothing,
 * hover and zoom; and the identical-rows toggle of the config table. */
(function () {
  "use strict";
  var toggle = document.getElementById("show-all-rows");
  var table = document.getElementById("diff-table");
  if (toggle && table) {
    toggle.addEventListener("change", function () { table.dataset.showAll = toggle.checked ? "1" : "0"; });
  }
  var data = JSON.parse((document.getElementById("compare-data") || {}).textContent || "null");
  if (!data || !window.H3Charts) return;
  var P = H3Charts.PALETTE;
  document.querySelectorAll("[data-swatch]").forEach(function (s) { s.style.background = P[+s.dataset.swatch % P.length]; });
  var groups = H3Charts.metricGroups(data.names || []);
  var logScale = document.getElementById("log-scale");
  var smoothing = document.getElementById("smoothing");
  var smoothingValue = document.getElementById("smoothing-value");
  var charts = Array.prototype.slice.call(document.querySelectorAll(".chart[data-metric]"));

  function groupNames(key) {
    var g = groups.filter(function (x) { return x.key === key; })[0];
    return g ? g.names : [];
  }

  // The page embeds the train/test loss and accuracy curves; other metrics are fetched once.
  var fetched = {};
  ["train_loss", "test_loss", "train_accuracy", "test_accuracy"].forEach(function (n) { fetched[n] = true; });
  function load(names) {
    var want = names.filter(function (n) { return !fetched[n]; });
    if (!want.length || !data.series_url) return Promise.resolve();
    var q = data.runs.map(function (r) { return "ids=" + r.id; })
      .concat(want.map(function (n) { return "name=" + encodeURIComponent(n); })).join("&");
    return fetch(data.series_url + "?" + q, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (d) {
        want.forEach(function (n) { fetched[n] = true; });
        Object.keys(d.series).forEach(function (id) {
          var runSeries = data.series[id] || (data.series[id] = {});
          Object.keys(d.series[id]).forEach(function (n) { runSeries[n] = d.series[id][n]; });
        });
      });
  }

  function draw() {
    charts.forEach(function (chart) {
      var key = chart.dataset.metric, accuracy = /accuracy$/.test(key), series = [];
      var title = document.getElementById(chart.id + "-title");
      if (title) title.textContent = key.charAt(0).toUpperCase() + key.slice(1).replace(/_/g, " ");
      data.runs.forEach(function (run, i) {
        var runSeries = data.series[run.id] || {};
        groupNames(key).forEach(function (name) {
          var part = H3Charts.splitLabel(name);
          series.push({ label: run.label + (part !== name ? " " + part : ""), color: P[i % P.length],
                        points: runSeries[name] || [], dashed: part === "train" });
        });
      });
      H3Charts.lineChart(chart, series, {
        ylabel: key.replace(/_/g, " "), legend: false,
        ymin: accuracy || /loss$/.test(key) ? 0 : undefined, ymax: accuracy ? 1 : undefined,
        logY: logScale && logScale.checked, smoothing: smoothing ? +smoothing.value : 0,
        empty: "No points of " + key + " yet.",
      });
    });
  }

  document.querySelectorAll("select[data-metric-picker]").forEach(function (select) {
    var chart = document.getElementById(select.dataset.metricPicker);
    var keys = groups.map(function (g) { return g.key; });
    if (keys.indexOf(chart.dataset.metric) < 0) keys.unshift(chart.dataset.metric);
    select.textContent = "";
    keys.forEach(function (k) {
      var opt = document.createElement("option");
      opt.value = k;
      opt.textContent = k;
      opt.selected = k === chart.dataset.metric;
      select.appendChild(opt);
    });
    select.addEventListener("change", function () {
      chart.dataset.metric = select.value;
      if (chart.h3Chart) chart.h3Chart.domain = null;
      load(groupNames(select.value)).then(draw, draw);
    });
  });
  if (logScale) logScale.addEventListener("change", draw);
  if (smoothing) {
    smoothing.addEventListener("input", function () {
      if (smoothingValue) smoothingValue.textContent = (+smoothing.value).toFixed(2);
      draw();
    });
  }
  draw();
})();
