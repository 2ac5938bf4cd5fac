/* h3lab charts: a small dependency-free interactive SVG line chart.
 *
 *   H3Charts.lineChart(container, series, options)
 *     series:  [{label, color, points: [[x, y], ...], dashed}]
 *     options: {ylabel, ymin, ymax, legend (default true), xlabel (default "step"),
 *               logY (log10 y axis; points <= 0 are left out), smoothing (0..0.999: EMA weight,
 *               as TensorBoard's slider; the raw line is drawn faint behind the smoothed one)}
 *
 * Interaction: hover shows a tooltip with the step and each series' value there; drag across
 * the plot zooms the x axis to the selection; double-click resets the zoom. The zoom is kept
 * on the container, so redrawing with new points (a live run) keeps the view.
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

  // Ticks for a log10 axis given in log units: powers of ten, with 2 and 5 when few decades.
  function logTicks(lmin, lmax) {
    var out = [], lo = Math.floor(lmin), hi = Math.ceil(lmax);
    var mults = hi - lo <= 2 ? [1, 2, 5] : [1];
    for (var e = lo; e <= hi; e++) {
      mults.forEach(function (m) {
        var l = Math.log10(m) + e;
        if (l >= lmin - 1e-9 && l <= lmax + 1e-9) out.push(l);
      });
    }
    if (out.length >= 3) return out;
    // Less than a decade shown (a zoom): plain ticks in value space, placed on the log axis.
    var plain = ticks(Math.pow(10, lmin), Math.pow(10, lmax), 4).filter(function (v) { return v > 0; });
    return plain.length ? plain.map(function (v) { return Math.log10(v); }) : [lmin];
  }

  function fmt(v) {
    var a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toPrecision(3).replace(/\.?0+$/, "") + "M";
    if (a >= 1e4) return (v / 1e3).toPrecision(3).replace(/\.?0+$/, "") + "k";
    if (a >= 100 || v === 0) return String(Math.round(v));
    if (a < 1e-3) return v.toExponential(1);
    return v.toPrecision(3).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  }

  function thin(points) {
    if (points.length <= MAX_POINTS) return points;
    var stride = Math.ceil(points.length / MAX_POINTS), out = [];
    for (var i = 0; i < points.length; i += stride) out.push(points[i]);
    if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
    return out;
  }

  // TensorBoard's smoothing: an exponential moving average, debiased so the first points are
  // not pulled towards zero.
  function smooth(points, weight) {
    if (!weight) return points;
    var last = 0, n = 0;
    return points.map(function (pt) {
      last = last * weight + (1 - weight) * pt[1];
      n++;
      return [pt[0], last / (1 - Math.pow(weight, n))];
    });
  }

  // Index of the point whose x is closest to x (points sorted by x).
  function nearest(points, x) {
    var lo = 0, hi = points.length - 1;
    while (hi - lo > 1) {
      var mid = (lo + hi) >> 1;
      if (points[mid][0] < x) lo = mid; else hi = mid;
    }
    return Math.abs(points[lo][0] - x) <= Math.abs(points[hi][0] - x) ? lo : hi;
  }

  function lineChart(container, series, options) {
    var opts = options || {};
    var state = container.h3Chart || (container.h3Chart = { domain: null });
    state.series = series;
    state.options = opts;
    function redraw() { lineChart(container, state.series, state.options); }

    var logY = !!opts.logY;
    var drawn = series.filter(function (s) { return s.points && s.points.length; }).map(function (s, i) {
      var pts = logY ? s.points.filter(function (p) { return p[1] > 0; }) : s.points;
      return { label: s.label, dashed: s.dashed, color: s.color || PALETTE[i % PALETTE.length],
               raw: pts, smooth: smooth(pts, opts.smoothing || 0) };
    }).filter(function (s) { return s.raw.length; });
    container.textContent = "";
    if (!drawn.length) {
      var p = document.createElement("p");
      p.className = "muted chart-empty";
      p.textContent = opts.empty || "No points yet.";
      container.appendChild(p);
      return;
    }
    var xs = [];
    drawn.forEach(function (s) { s.raw.forEach(function (pt) { xs.push(pt[0]); }); });
    var xmin = Math.min.apply(null, xs), xmax = Math.max.apply(null, xs);
    if (state.domain) { xmin = state.domain[0]; xmax = state.domain[1]; }
    if (xmax === xmin) xmax = xmin + 1;
    var ys = [];
    drawn.forEach(function (s) {
      [s.raw, s.smooth].forEach(function (pts) {
        pts.forEach(function (pt) { if (pt[0] >= xmin && pt[0] <= xmax) ys.push(pt[1]); });
      });
    });
    if (!ys.length) ys = [0, 1];
    var T = logY ? function (v) { return Math.log10(v); } : function (v) { return v; };
    var dmin = Math.min.apply(null, ys), dmax = Math.max.apply(null, ys);
    var ymin, ymax;
    if (logY) {
      ymin = T(dmin); ymax = T(dmax);
      if (ymax - ymin < 1e-9) { ymin -= 0.5; ymax += 0.5; }
    } else {
      ymin = opts.ymin !== undefined && !state.domain ? Math.min(opts.ymin, dmin) : dmin;
      ymax = opts.ymax !== undefined && !state.domain ? Math.max(opts.ymax, dmax) : dmax;
      if (ymax === ymin) ymax = ymin + 1;
    }
    ymax += (ymax - ymin) * 0.04;
    var pw = W - M.left - M.right, ph = H - M.top - M.bottom;
    function X(v) { return M.left + (v - xmin) / (xmax - xmin) * pw; }
    function Y(v) { return M.top + ph - (T(v) - ymin) / (ymax - ymin) * ph; }
    function invX(px) { return xmin + (px - M.left) / pw * (xmax - xmin); }

    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
                          "aria-label": (opts.ylabel || "value") + " by " + (opts.xlabel || "step") +
                                        (logY ? " (log scale)" : "") }, container);
    (logY ? logTicks(ymin, ymax) : ticks(ymin, ymax, 5)).forEach(function (t) {
      var y = M.top + ph - (t - ymin) / (ymax - ymin) * ph;
      el("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, "class": "grid-line" }, svg);
      el("text", { x: M.left - 8, y: y + 4, "text-anchor": "end", "class": "axis-label" }, svg,
         fmt(logY ? Math.pow(10, t) : t));
    });
    ticks(xmin, xmax, 6).forEach(function (t) {
      el("text", { x: X(t), y: H - M.bottom + 16, "text-anchor": "middle", "class": "axis-label" }, svg, fmt(t));
    });
    el("line", { x1: M.left, x2: W - M.right, y1: M.top + ph, y2: M.top + ph, stroke: "#cfd5e3" }, svg);
    el("text", { x: W - M.right, y: H - 4, "text-anchor": "end", "class": "axis-label" }, svg,
       (opts.xlabel || "step") + (state.domain ? " (zoomed: double-click to reset)" : ""));
    if (opts.ylabel) {
      el("text", { x: 12, y: M.top + ph / 2, "text-anchor": "middle", "class": "axis-label",
                   transform: "rotate(-90 12 " + (M.top + ph / 2) + ")" }, svg, opts.ylabel + (logY ? " (log)" : ""));
    }

    var clipId = "clip-" + Math.random().toString(36).slice(2);
    var clip = el("clipPath", { id: clipId }, el("defs", {}, svg));
    el("rect", { x: M.left, y: M.top - 4, width: pw, height: ph + 8 }, clip);
    var plot = el("g", { "clip-path": "url(#" + clipId + ")" }, svg);
    function pathOf(pts) {
      return thin(pts).map(function (pt, j) { return (j ? "L" : "M") + X(pt[0]).toFixed(1) + " " + Y(pt[1]).toFixed(1); }).join("");
    }
    drawn.forEach(function (s) {
      if (opts.smoothing) el("path", { d: pathOf(s.raw), "class": "series series-raw", stroke: s.color }, plot);
      var path = el("path", { d: pathOf(s.smooth), "class": "series", stroke: s.color }, plot);
      if (s.dashed) path.setAttribute("stroke-dasharray", "5 4");
      var last = s.smooth[s.smooth.length - 1];
      var dot = el("circle", { cx: X(last[0]), cy: Y(last[1]), r: 3.5, fill: s.color }, plot);
      el("title", {}, dot, (s.label || "") + " @ " + last[0] + ": " + fmt(last[1]));
    });

    if (opts.legend !== false) {
      var g = el("g", { "class": "legend" }, svg), x = M.left;
      drawn.forEach(function (s) {
        el("line", { x1: x, x2: x + 16, y1: 10, y2: 10, stroke: s.color, "stroke-width": 3,
                     "stroke-dasharray": s.dashed ? "5 3" : "none" }, g);
        var label = el("text", { x: x + 21, y: 14 }, g, s.label || "");
        x += 34 + (label.getComputedTextLength ? label.getComputedTextLength() : 40);
      });
    }

    // Hover and zoom. The overlay takes the pointer over the plot area.
    var cursor = el("line", { y1: M.top, y2: M.top + ph, "class": "hover-line", visibility: "hidden" }, svg);
    var band = el("rect", { y: M.top, height: ph, "class": "zoom-band", visibility: "hidden" }, svg);
    var overlay = el("rect", { x: M.left, y: M.top, width: pw, height: ph, "class": "chart-overlay" }, svg);
    var tip = document.createElement("div");
    tip.className = "chart-tip";
    tip.hidden = true;
    container.appendChild(tip);

    function toSvgX(evt) {
      var box = svg.getBoundingClientRect();
      return (evt.clientX - box.left) / box.width * W;
    }
    // The pointer and a drag in progress live on the container's state: a live run redraws
    // every second, and the tooltip and the selection must survive that.
    function hover(evt) {
      state.pointer = evt.clientX;
      var px = Math.max(M.left, Math.min(W - M.right, toSvgX(evt)));
      if (state.dragFrom !== null && state.dragFrom !== undefined) {
        band.setAttribute("x", Math.min(state.dragFrom, px));
        band.setAttribute("width", Math.abs(px - state.dragFrom));
        band.setAttribute("visibility", "visible");
      }
      var x = invX(px), best = null;
      drawn.forEach(function (s) {
        var i = nearest(s.smooth, x);
        if (best === null || Math.abs(s.smooth[i][0] - x) < Math.abs(best - x)) best = s.smooth[i][0];
      });
      tip.textContent = "";
      var head = document.createElement("strong");
      head.textContent = "step " + best;
      tip.appendChild(head);
      drawn.forEach(function (s) {
        var i = nearest(s.smooth, best);
        if (s.smooth[i][0] !== best) return;
        var row = document.createElement("div");
        var sw = document.createElement("span");
        sw.className = "chart-tip-swatch";
        sw.style.background = s.color;
        row.appendChild(sw);
        var text = (s.label || "") + ": " + fmt(s.smooth[i][1]);
        if (opts.smoothing) text += " (raw " + fmt(s.raw[i][1]) + ")";
        row.appendChild(document.createTextNode(text));
        tip.appendChild(row);
      });
      var cx = X(best);
      cursor.setAttribute("x1", cx);
      cursor.setAttribute("x2", cx);
      cursor.setAttribute("visibility", "visible");
      tip.hidden = false;
      var box = svg.getBoundingClientRect(), scale = box.width / W;
      var left = cx * scale + 12;
      if (left + tip.offsetWidth > box.width) left = cx * scale - tip.offsetWidth - 12;
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = (M.top * scale) + "px";
    }
    overlay.addEventListener("mousemove", hover);
    overlay.addEventListener("mouseleave", function () {
      tip.hidden = true;
      cursor.setAttribute("visibility", "hidden");
      band.setAttribute("visibility", "hidden");
      state.dragFrom = null;
      state.pointer = null;
    });
    overlay.addEventListener("mousedown", function (evt) {
      evt.preventDefault();
      state.dragFrom = Math.max(M.left, Math.min(W - M.right, toSvgX(evt)));
    });
    overlay.addEventListener("mouseup", function (evt) {
      if (state.dragFrom === null || state.dragFrom === undefined) return;
      var to = Math.max(M.left, Math.min(W - M.right, toSvgX(evt)));
      var a = Math.min(state.dragFrom, to), b = Math.max(state.dragFrom, to);
      state.dragFrom = null;
      band.setAttribute("visibility", "hidden");
      if (b - a < 6) return; // a click, not a drag
      state.domain = [invX(a), invX(b)];
      redraw();
    });
    overlay.addEventListener("dblclick", function () {
      if (!state.domain) return;
      state.domain = null;
      redraw();
    });
    container.dataset.zoomed = state.domain ? "1" : "0";
    if (state.pointer !== null && state.pointer !== undefined) hover({ clientX: state.pointer });
  }

  // Group metric names into chart choices: "train_loss" and "test_loss" are one choice,
  // "loss", drawn together; any other name is a choice of its own.
  var SPLITS = /^(train|test|val|eval)_(.+)$/;
  function metricGroups(names) {
    var groups = {};
    names.forEach(function (n) {
      var m = SPLITS.exec(n), key = m ? m[2] : n;
      (groups[key] = groups[key] || []).push(n);
    });
    return Object.keys(groups).sort().map(function (k) { return { key: k, names: groups[k].sort().reverse() }; });
  }

  function splitLabel(name) {
    var m = SPLITS.exec(name);
    return m ? m[1] : name;
  }

  window.H3Charts = { lineChart: lineChart, PALETTE: PALETTE, format: fmt, smooth: smooth,
                      metricGroups: metricGroups, splitLabel: splitLabel };
})();
