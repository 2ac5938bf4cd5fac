// Export page: poll the export's progress while it is being built, then reload.
(function () {
  var box = document.getElementById("export-state");
  if (!box || box.dataset.active !== "1") return;
  function poll() {
    fetch(box.dataset.url, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (d) {
      document.getElementById("export-status").textContent = d.label;
      document.getElementById("export-progress").value = d.progress;
      document.getElementById("export-message").textContent = d.message;
      if (d.active) { setTimeout(poll, 1000); } else { window.location.reload(); }
    }).catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 1000);
})();
