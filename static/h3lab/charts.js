/* h3lab charts: a tiny dependency-free SVG line chart.
 *
 *   H3Charts.lineChart(container, series, options)
 *     series:  [{label, color, points: [[x, y], ...], dashed}]
 *     options: {ylabel, ymin, ymax, legend (default true), xlabel (default "step")}
 *
 * Redrawing replaces the container's contents; call it again with the full series.
 */
(function () {
  "use strict";

  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#4f46e5", "#0ea5e9", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6",
                 "#ec4899", "#14b8a6", "#84cc16", "#f97316", "#64748b", "#a855f7"];
  var W = 560, H = 270, M = { top: 30, right: 16, bottom: 34, left: 52 };
  var MAX_POINTS = 1500; // more than the chart has pixels; thin out longer series

  function el(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceStep(span, count) {
    var raw = span / Math.max(1, count);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var norm = raw / mag;
    return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  }

  function ticks(min, max, count) {
    if (max <= min) return [min];
    var step = niceStep(max - min, count), out = [];
    for (var v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmt(v) {
    var a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toPrecision(3).replace(/\.?0+$/, "") + "M";
    if (a >= 1e4) return (v / 1e3).toPrecision(3).replace(/\.?0+$/, "") + "k";
    if (a >= 100 || v === 0) return String(Math.round(v));
    return v.toPrecision(3).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  }

  function thin(points) {
    if (points.length <= MAX_POINTS) return points;
    var stride = Math.ceil(points.length / MAX_POINTS), out = [];
    for (var i = 0; i < points.length; i += stride) out.push(points[i]);
    if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
    return out;
  }

  function lineChart(container, series, options) {
    var opts = options || {};
    var drawn = series.filter(function (s) { return s.points && s.points.length; });
    container.textContent = "";
    if (!drawn.length) {
      var p = document.createElement("p");
      p.className = "muted chart-empty";
      p.textContent = opts.empty || "No points yet.";
      container.appendChild(p);
      return;
    }
    var xs = [], ys = [];
    drawn.forEach(function (s) { s.points.forEach(function (pt) { xs.push(pt[0]); ys.push(pt[1]); }); });
    var xmin = Math.min.apply(null, xs), xmax = Math.max.apply(null, xs);
    var ymin = opts.ymin !== undefined ? opts.ymin : Math.min(0, Math.min.apply(null, ys));
    var ymax = opts.ymax !== undefined ? Math.max(opts.ymax, Math.max.apply(null, ys)) : Math.max.apply(null, ys);
    if (xmax === xmin) xmax = xmin + 1;
    if (ymax === ymin) ymax = ymin + 1;
    ymax += (ymax - ymin) * 0.04;
    var pw = W - M.left - M.right, ph = H - M.top - M.bottom;
    function X(v) { return M.left + (v - xmin) / (xmax - xmin) * pw; }
    function Y(v) { return M.top + ph - (v - ymin) / (ymax - ymin) * ph; }

    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
                          "aria-label": (opts.ylabel || "value") + " by " + (opts.xlabel || "step") }, container);
    ticks(ymin, ymax, 5).forEach(function (t) {
      el("line", { x1: M.left, x2: W - M.right, y1: Y(t), y2: Y(t), "class": "grid-line" }, svg);
      el("text", { x: M.left - 8, y: Y(t) + 4, "text-anchor": "end", "class": "axis-label" }, svg, fmt(t));
    });
    ticks(xmin, xmax, 6).forEach(function (t) {
      el("text", { x: X(t), y: H - M.bottom + 16, "text-anchor": "middle", "class": "axis-label" }, svg, fmt(t));
    });
    el("line", { x1: M.left, x2: W - M.right, y1: M.top + ph, y2: M.top + ph, stroke: "#cfd5e3" }, svg);
    el("text", { x: W - M.right, y: H - 4, "text-anchor": "end", "class": "axis-label" }, svg, opts.xlabel || "step");
    if (opts.ylabel) {
      el("text", { x: 12, y: M.top + ph / 2, "text-anchor": "middle", "class": "axis-label",
                   transform: "rotate(-90 12 " + (M.top + ph / 2) + ")" }, svg, opts.ylabel);
    }

    drawn.forEach(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      var pts = thin(s.points);
      var d = pts.map(function (pt, j) { return (j ? "L" : "M") + X(pt[0]).toFixed(1) + " " + Y(pt[1]).toFixed(1); }).join("");
      var path = el("path", { d: d, "class": "series", stroke: color }, svg);
      if (s.dashed) path.setAttribute("stroke-dasharray", "5 4");
      var last = s.points[s.points.length - 1];
      var dot = el("circle", { cx: X(last[0]), cy: Y(last[1]), r: 3.5, fill: color }, svg);
      el("title", {}, dot, (s.label || "") + " @ " + last[0] + ": " + fmt(last[1]));
    });

    if (opts.legend !== false) {
      var g = el("g", { "class": "legend" }, svg), x = M.left;
      drawn.forEach(function (s, i) {
        var color = s.color || PALETTE[i % PALETTE.length];
        el("line", { x1: x, x2: x + 16, y1: 10, y2: 10, stroke: color, "stroke-width": 3,
                     "stroke-dasharray": s.dashed ? "5 3" : "none" }, g);
        var label = el("text", { x: x + 21, y: 14 }, g, s.label || "");
        x += 34 + (label.getComputedTextLength ? label.getComputedTextLength() : 40);
      });
    }
  }

  window.H3Charts = { lineChart: lineChart, PALETTE: PALETTE, format: fmt };
})();
