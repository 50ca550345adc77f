/* Gallery upload: the form posts through htmx (multipart); this shows the upload's progress from htmx's
 * xhr progress events, then says the server is importing until the report is swapped in. A refusal (400)
 * carries the reason, so it is swapped in too. CSP allows scripts from 'self' only: no inline handlers.
 */
(function () {
  "use strict";

  function wire(form) {
    const box = form.querySelector("[data-role=upload-progress]");
    const bar = box.querySelector(".bar");
    const label = box.querySelector("span");

    form.addEventListener("htmx:beforeRequest", function () {
      box.hidden = false;
      box.classList.remove("busy");
      bar.style.width = "0";
      label.textContent = "uploading 0 %";
    });
    form.addEventListener("htmx:xhr:progress", function (event) {
      if (!event.detail.lengthComputable) return;
      const percent = Math.round((100 * event.detail.loaded) / event.detail.total);
      bar.style.width = percent + "%";
      label.textContent = percent < 100 ? "uploading " + percent + " %" : "importing…";
      if (percent >= 100) box.classList.add("busy");
      box.setAttribute("aria-valuenow", String(percent));
    });
    form.addEventListener("htmx:beforeSwap", function (event) {
      if (event.detail.xhr.status === 400) {
        event.detail.shouldSwap = true;
        event.detail.isError = false;
      }
    });
    form.addEventListener("htmx:afterRequest", function () {
      box.classList.remove("busy");
      bar.style.width = "100%";
      label.textContent = "done";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("gallery-upload");
    if (form) wire(form);
  });
})();
