/* Progressive enhancement for forms: the run form shows the corpus fields only for file
 * tasks and switches vocab/length to the task's defaults until the researcher edits them;
 * the runs list enables "Compare selected" once runs are ticked. */
(function () {
  "use strict";
  var task = document.getElementById("id_task");
  if (task) {
    var defaults = JSON.parse((document.getElementById("task-defaults") || {}).textContent || "{}");
    var corpus = document.querySelector("[data-show-for]");
    var touched = {};
    ["vocab_size", "seq_len"].forEach(function (name) {
      var input = document.getElementById("id_" + name);
      if (input) input.addEventListener("input", function () { touched[name] = true; });
    });
    var sync = function (applyDefaults) {
      if (corpus) corpus.hidden = corpus.dataset.showFor.split(" ").indexOf(task.value) < 0;
      var vocab = document.getElementById("id_vocab_size");
      if (vocab) vocab.disabled = task.value === "text";
      if (!applyDefaults) return;
      var d = defaults[task.value] || {};
      Object.keys(d).forEach(function (name) {
        var input = document.getElementById("id_" + name);
        if (input && !touched[name]) input.value = d[name];
      });
    };
    task.addEventListener("change", function () { sync(true); });
    sync(false);
    // Disabled inputs are not submitted; re-enable before sending so the form stays valid.
    task.form.addEventListener("submit", function () {
      var vocab = document.getElementById("id_vocab_size");
      if (vocab) vocab.disabled = false;
    });
  }

  var compare = document.getElementById("compare-form");
  if (compare) {
    var boxes = compare.querySelectorAll('input[name="ids"]');
    var button = compare.querySelector("[data-compare-button]");
    var count = compare.querySelector("[data-compare-count]");
    var all = compare.querySelector("[data-select-all]");
    var refresh = function () {
      var n = compare.querySelectorAll('input[name="ids"]:checked').length;
      button.disabled = n === 0;
      count.textContent = n ? n + " selected" : "Select runs to compare their configs and curves.";
    };
    boxes.forEach(function (b) { b.addEventListener("change", refresh); });
    if (all) all.addEventListener("change", function () { boxes.forEach(function (b) { b.checked = all.checked; }); refresh(); });
    refresh();
  }
})();
