/* Progressive enhancement for forms: the run form shows the corpus fields only for file
 * tasks and, when the task or model changes, switches every field of the task's quick-start
 * preset for that model (or the task's paper sizes) until the researcher edits that field, and
 * shows the preset's label under the task; the runs list enables "Compare selected" once runs
 * are ticked. */
(function () {
  "use strict";
  var task = document.getElementById("id_task");
  if (task) {
    var defaults = JSON.parse((document.getElementById("task-defaults") || {}).textContent || "{}");
    var model = document.getElementById("id_preset");
    var corpus = document.querySelector("[data-show-for]");
    var note = document.querySelector("#field-task .help");
    var touched = {};
    ["vocab_size", "seq_len", "d_model", "n_layer", "steps", "lr", "batch_size"].forEach(function (name) {
      var input = document.getElementById("id_" + name);
      if (input) input.addEventListener("input", function () { touched[name] = true; });
    });
    var sync = function (applyDefaults) {
      if (corpus) corpus.hidden = corpus.dataset.showFor.split(" ").indexOf(task.value) < 0;
      var vocab = document.getElementById("id_vocab_size");
      if (vocab) vocab.disabled = task.value === "text";
      if (!applyDefaults) return;
      var byModel = defaults[task.value] || {};
      var d = byModel[model ? model.value : ""] || byModel[""] || {};
      if (note) note.textContent = d.label || "";
      Object.keys(d).forEach(function (name) {
        var input = document.getElementById("id_" + name);
        if (input && !touched[name]) input.value = d[name];
      });
    };
    task.addEventListener("change", function () { sync(true); });
    if (model) model.addEventListener("change", function () { sync(true); });
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
