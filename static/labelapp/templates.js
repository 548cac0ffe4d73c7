// Prompt templates page: a live preview. While the admin edits the template or the sample rows,
// post the form (debounced) to the preview view and put the server-rendered fragment in place of
// the old one: the prompt is rendered by the same partial annotators see. Nothing is saved.
(function () {
  "use strict";
  const form = document.getElementById("template-form");
  const target = document.getElementById("preview");
  if (!form || !target) return;
  let timer = null;
  let latest = 0;

  async function refresh() {
    const ticket = ++latest;
    const body = new FormData(form);
    body.set("action", "preview");
    try {
      const response = await fetch(form.dataset.previewUrl, { method: "POST", body, credentials: "same-origin" });
      if (!response.ok || ticket !== latest) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      target.replaceChildren(...Array.from(doc.body.childNodes));
    } catch (err) {
      // offline or the server is restarting: the Preview button still works
    }
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, 300);
  }

  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  document.getElementById("preview-button").addEventListener("click", (event) => {
    event.preventDefault();
    refresh();
  });
  if (document.getElementById("t-sample").value.trim()) refresh();
})();
