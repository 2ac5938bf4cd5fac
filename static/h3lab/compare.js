/* Compare page: overlaid curves (one colour per run) and the identical-rows toggle. */
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
  document.querySelectorAll(".chart[data-compare]").forEach(function (chart) {
    function pick(name) {
      return data.runs.map(function (run, i) {
        var runSeries = data.series[run.id] || {};
        return { label: run.label, color: P[i % P.length], points: runSeries[name] || [] };
      });
    }
    var series = pick(chart.dataset.compare), label = chart.dataset.ylabel;
    if (!series.some(function (s) { return s.points.length; }) && chart.dataset.fallback) {
      series = pick(chart.dataset.fallback);
      var title = chart.parentNode.querySelector("h2");
      if (title) title.textContent = title.textContent.replace(/^Test/, "Train");
    }
    H3Charts.lineChart(chart, series, { ylabel: label, ymin: 0, ymax: chart.dataset.ymax ? +chart.dataset.ymax : undefined, legend: false });
  });
})();
