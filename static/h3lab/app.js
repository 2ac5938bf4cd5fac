// Every page. No inline script or style attribute is allowed (Content-Security-Policy), so what
// templates used to do inline happens here.
document.addEventListener("DOMContentLoaded", function () {
  // Progress bars: the width travels as data-width (percent) and is set through the CSSOM,
  // which the policy allows, instead of a style attribute, which it does not.
  document.querySelectorAll("[data-width]").forEach(function (el) {
    var pct = parseFloat(el.getAttribute("data-width"));
    if (!isNaN(pct)) { el.style.width = Math.max(0, Math.min(100, pct)) + "%"; }
  });
  // Instants are stored and rendered in UTC; show them in the viewer's local time too.
  document.querySelectorAll("time[data-local]").forEach(function (el) {
    var d = new Date(el.getAttribute("datetime"));
    if (!isNaN(d)) { el.title = el.textContent; el.textContent = d.toLocaleString(); }
  });
  document.querySelectorAll("input[name=tz_offset]").forEach(function (el) {
    el.value = -new Date().getTimezoneOffset();
  });
});
