// Key handling, drafts, time on task and drag ranking for the annotator pages.
// The keymap comes from the server (labelapp/keymap.py) in <script id="keymap" type="application/json">;
// the same table renders the `?` help dialog, so what the help says is what the keys do.
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function keySpec(event) {
    const mods = [];
    if (event.ctrlKey) mods.push("ctrl");
    if (event.metaKey) mods.push("meta");
    if (event.altKey) mods.push("alt");
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key.toLowerCase();
    if (event.shiftKey && event.key.length > 1) mods.push("shift");
    return mods.concat([key]).join("+");
  }

  function isTyping(el) {
    if (!el) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    if (el.tagName !== "INPUT") return false;
    return !["checkbox", "radio", "button", "submit", "reset"].includes(el.type);
  }

  // ---- rank page helpers -------------------------------------------------------------
  const cards = () => $$(".response");
  const focusedCard = () => (document.activeElement ? document.activeElement.closest(".response") : null);

  function focusCard(index) {
    const all = cards();
    if (!all.length) return;
    all[Math.max(0, Math.min(index, all.length - 1))].focus();
  }

  function moveFocus(step) {
    const all = cards();
    const current = all.indexOf(focusedCard());
    if (current < 0) focusCard(step > 0 ? 0 : all.length - 1);
    else focusCard(current + step);
  }

  function setRank(digit) {
    const form = $("#label-form");
    const k = Number(form && form.dataset.k);
    const value = Number(digit);
    if (!k || value < 1 || value > k) return;
    let card = focusedCard();
    if (!card) card = cards().find((c) => !$(".rank-input", c).value) || cards()[0];
    $(".rank-input", card).value = String(value);
    card.classList.add("ranked");
    const all = cards();
    const next = all.indexOf(card) + 1;
    if (next < all.length) all[next].focus();
    else {
      const submit = $("#label-form button[type=submit]");
      if (submit) submit.focus();
    }
  }

  function renumberByPosition() {
    cards().forEach((card, i) => {
      $(".rank-input", card).value = String(i + 1);
      card.classList.add("ranked");
    });
  }

  // ---- actions -----------------------------------------------------------------------
  function toggleHelp() {
    const dialog = $("#help");
    if (!dialog) return;
    if (dialog.open) dialog.close();
    else dialog.showModal();
  }

  function submitLabelForm() {
    const form = $("#label-form");
    if (form) form.requestSubmit();
  }

  const actions = {
    help: toggleHelp,
    escape() {
      const dialog = $("#help");
      if (dialog && dialog.open) return dialog.close();
      const el = document.activeElement;
      if (isTyping(el)) {
        const card = el.closest(".response");
        if (card) card.focus();
        else el.blur();
      }
    },
    submit: submitLabelForm,
    skip() {
      const reason = $("#skip-reason");
      if (reason) reason.focus();
    },
    rank: setRank,
    next: () => moveFocus(1),
    prev: () => moveFocus(-1),
  };

  function run(action, key, event) {
    const [name, arg] = action.split(":");
    if (name === "click") {
      const el = document.getElementById(arg);
      if (!el || el.disabled) return false;
      el.click();
    } else if (name === "focus") {
      const el = document.getElementById(arg);
      if (!el) return false;
      el.focus();
    } else if (name === "toggle") {
      const box = document.getElementById(arg);
      if (!box) return false;
      box.checked = !box.checked;
    } else if (name === "flag") {
      const card = focusedCard();
      const box = card && $(`input[data-flag="${arg}"]`, card);
      if (!box) return false;
      box.checked = !box.checked;
    } else if (name === "score") {
      const card = focusedCard();
      if (!card) return false;
      $(".score-input", card).focus();
    } else if (actions[name]) {
      actions[name](key, event);
    } else {
      return false;
    }
    return true;
  }

  function bindKeys() {
    const source = $("#keymap");
    if (!source) return;
    const table = new Map();
    for (const binding of JSON.parse(source.textContent)) {
      for (const key of binding.keys) table.set(key, binding);
    }
    document.addEventListener("keydown", (event) => {
      if (event.isComposing || event.repeat) return;
      const spec = keySpec(event);
      const binding = table.get(spec) || (spec.startsWith("shift+") ? table.get(spec.slice(6)) : undefined);
      if (!binding) return;
      const helpOpen = $("#help") && $("#help").open;
      if (helpOpen && binding.action !== "help" && binding.action !== "escape") return;
      if (isTyping(event.target) && !binding.in_text) return;
      if (run(binding.action, event.key, event)) event.preventDefault();
    });
    $$("[data-action=help]").forEach((btn) => btn.addEventListener("click", toggleHelp));
  }

  // ---- drafts, timers, double submits --------------------------------------------------
  function keepDrafts() {
    $$("form[data-draft-key]").forEach((form) => {
      const key = form.dataset.draftKey;
      const area = $("[data-keep-draft]", form);
      if (!area) return;
      const saved = window.localStorage.getItem(key);
      if (saved && !area.value) area.value = saved;
      area.addEventListener("input", () => window.localStorage.setItem(key, area.value));
      form.addEventListener("submit", () => window.localStorage.removeItem(key));
    });
  }

  function timeOnTask() {
    $$("form[data-timer]").forEach((form) => {
      let spent = 0;
      let since = document.visibilityState === "visible" ? performance.now() : null;
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible") since = performance.now();
        else if (since !== null) {
          spent += performance.now() - since;
          since = null;
        }
      });
      form.addEventListener("submit", () => {
        const total = spent + (since !== null ? performance.now() - since : 0);
        form.elements.time_spent_ms.value = String(Math.round(total));
      });
    });
  }

  function guardDoubleSubmit() {
    $$("form[method=post]").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (form.dataset.sent) {
          event.preventDefault();
          return;
        }
        form.dataset.sent = "1";
        // Disable after the browser has collected the submitter's name/value.
        setTimeout(() => $$("button[type=submit]", form).forEach((b) => (b.disabled = true)), 0);
      });
    });
  }

  // ---- drag to reorder (mouse); the keyboard path is the digit keys ----------------------
  function dragRanking() {
    const list = $("#responses");
    if (!list) return;
    let dragged = null;
    list.addEventListener("dragstart", (event) => {
      dragged = event.target.closest(".response");
      if (dragged) event.dataTransfer.setData("text/plain", dragged.dataset.cid);
    });
    list.addEventListener("dragover", (event) => {
      if (dragged) event.preventDefault();
    });
    list.addEventListener("drop", (event) => {
      const target = event.target.closest(".response");
      if (!dragged || !target || target === dragged) return;
      event.preventDefault();
      const box = target.getBoundingClientRect();
      const after = event.clientY > box.top + box.height / 2;
      list.insertBefore(dragged, after ? target.nextSibling : target);
      renumberByPosition();
      dragged.focus();
      dragged = null;
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    bindKeys();
    keepDrafts();
    timeOnTask();
    guardDoubleSubmit();
    dragRanking();
    if (document.body.dataset.page === "rank" && !$("#errors")) focusCard(0);
    // The browser applies `autofocus` at its next rendering update, which can come after the
    // first keystroke of a fast typist (the first letter would be lost); focus it now.
    const auto = $("[autofocus]");
    if (auto && (document.activeElement === document.body || !document.activeElement)) auto.focus();
  });
})();
