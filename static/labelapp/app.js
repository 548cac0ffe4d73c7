// Key handling, drafts, time on task, the ranking model and drag ranking for the annotator pages.
// The keymap comes from the server (labelapp/pages/keymap.py) in <script id="keymap" type="application/json">;
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
    const key = event.key.toLowerCase();
    if (event.shiftKey && event.key.length > 1) mods.push("shift");
    return mods.concat([key]).join("+");
  }

  function isTyping(el) {
    if (!el) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    if (el.tagName !== "INPUT") return false;
    return !["checkbox", "radio", "button", "submit", "reset"].includes(el.type);
  }

  // ---- the ranking model ---------------------------------------------------------------
  // One response is *current*: outlined, badged, named in the live status line. Every rank,
  // flag and score key acts on it, and only J/K, Tab, a click or a drag change it: ranking a
  // response never moves on by itself, so a flag typed after a rank lands on the same card.
  const rank = {
    current: 0,
    cards: () => $$("#responses .response"),
    card() {
      return this.cards()[this.current] || null;
    },
    letter: (card) => card.dataset.letter,
    value: (card) => $(".rank-input", card).value.trim(),

    describe(card) {
      const parts = [];
      const value = this.value(card);
      parts.push(value ? `rank ${value}` : "no rank");
      const flags = $$("input[data-flag]:checked", card).map((box) => box.dataset.label);
      if (flags.length) parts.push(`flagged ${flags.join(", ")}`);
      const score = $(".score-input", card).value.trim();
      if (score) parts.push(`score ${score}`);
      return `${this.letter(card)} (${parts.join(", ")})`;
    },

    say(action) {
      const status = $("#rank-status");
      if (!status) return;
      const card = this.card();
      const missing = this.cards().filter((c) => !this.value(c)).map((c) => this.letter(c));
      const rest = missing.length ? ` Still without a rank: ${missing.join(", ")}.` : " Every response has a rank.";
      status.textContent = `${action ? action + " " : ""}Current: ${this.describe(card)}.${rest}`;
    },

    mark() {
      this.cards().forEach((card, i) => {
        const on = i === this.current;
        card.classList.toggle("current", on);
        if (on) card.setAttribute("aria-current", "true");
        else card.removeAttribute("aria-current");
        card.classList.toggle("ranked", Boolean(this.value(card)));
      });
    },

    select(index, { focus = true, action = "" } = {}) {
      const all = this.cards();
      if (!all.length) return;
      const changed = index !== this.current;
      this.current = Math.max(0, Math.min(index, all.length - 1));
      this.mark();
      if (focus && document.activeElement !== all[this.current]) all[this.current].focus();
      if (changed || action) this.say(action);
    },

    move(step) {
      const all = this.cards();
      const target = this.current + step;
      if (target < 0 || target >= all.length) {
        this.say(step > 0 ? "Already at the last response." : "Already at the first response.");
        this.card().focus();
        return;
      }
      this.select(target);
    },

    set(digit) {
      const form = $("#label-form");
      const k = Number(form && form.dataset.k);
      const value = Number(digit);
      const card = this.card();
      if (!card) return;
      if (!k || value < 1 || value > k) {
        this.say(`Ranks go from 1 to ${k}.`);
        return;
      }
      $(".rank-input", card).value = String(value);
      this.mark();
      this.say(`Ranked ${this.letter(card)} ${value}.`);
    },

    clear() {
      const card = this.card();
      if (!card) return;
      $(".rank-input", card).value = "";
      this.mark();
      this.say(`Cleared the rank of ${this.letter(card)}.`);
    },

    flag(name) {
      const card = this.card();
      const box = card && $(`input[data-flag="${name}"]`, card);
      if (!box) return false;
      box.checked = !box.checked;
      this.say(`${box.checked ? "Flagged" : "Unflagged"} ${this.letter(card)} ${box.dataset.label}.`);
      return true;
    },

    score() {
      const card = this.card();
      if (!card) return false;
      $(".score-input", card).focus();
      this.say(`Type a score from 1 to 7 for ${this.letter(card)}, then Esc.`);
      return true;
    },

    renumberByPosition() {
      this.cards().forEach((card, i) => {
        $(".rank-input", card).value = String(i + 1);
      });
      this.mark();
    },

    init() {
      const list = $("#responses");
      if (!list) return;
      // Whatever takes focus inside a card (Tab, a click, the score box) makes it current.
      list.addEventListener("focusin", (event) => {
        const card = event.target.closest(".response");
        const index = this.cards().indexOf(card);
        if (index >= 0 && index !== this.current) this.select(index, { focus: false });
      });
      list.addEventListener("input", (event) => {
        const card = event.target.closest(".response");
        if (!card) return;
        this.mark();
        this.say("");
      });
      const all = this.cards();
      const start = $("#errors") ? Math.max(0, all.findIndex((c) => !this.value(c))) : 0;
      this.current = start;
      this.mark();
      this.say("");
      if (all[start]) all[start].focus();
    },
  };

  // ---- layout and text views -------------------------------------------------------------
  function layoutToggle() {
    const button = $("#toggle-layout");
    const list = $("#responses");
    if (!button || !list) return;
    const key = `layout:${list.children.length === 2 ? "pair" : "many"}`;
    const apply = (columns) => {
      list.classList.toggle("columns", columns);
      button.setAttribute("aria-pressed", String(columns));
    };
    const saved = window.localStorage.getItem(key);
    apply(saved ? saved === "columns" : button.dataset.default === "columns");
    button.addEventListener("click", () => {
      const columns = !list.classList.contains("columns");
      apply(columns);
      window.localStorage.setItem(key, columns ? "columns" : "stacked");
    });
  }

  function rawToggle() {
    const button = $("#toggle-raw");
    if (!button) return;
    const apply = (raw) => {
      $$("[data-view=raw]").forEach((el) => (el.hidden = !raw));
      $$("[data-view=rendered]").forEach((el) => (el.hidden = raw));
      button.setAttribute("aria-pressed", String(raw));
      button.firstChild.textContent = raw ? "Show rendered text " : "Show raw text ";
    };
    apply(window.localStorage.getItem("text-view") === "raw");
    button.addEventListener("click", () => {
      const raw = button.getAttribute("aria-pressed") !== "true";
      apply(raw);
      window.localStorage.setItem("text-view", raw ? "raw" : "rendered");
    });
  }

  // Times the server renders in UTC (<time datetime=… data-local-time>) shown in the browser's zone.
  function localTimes() {
    $$("time[data-local-time]").forEach((el) => {
      const when = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(when.getTime())) return;
      const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
      el.textContent = `${when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })} (${zone})`;
      el.title = when.toString();
    });
  }

  // ---- actions -----------------------------------------------------------------------
  const openDialog = () => $$("dialog").find((d) => d.open) || null;

  function toggleDialog(id) {
    const dialog = document.getElementById(id);
    if (!dialog) return false;
    const open = openDialog();
    if (open && open !== dialog) open.close();
    if (dialog.open) dialog.close();
    else dialog.showModal();
    return true;
  }

  function submitLabelForm() {
    const form = $("#label-form");
    if (form) form.requestSubmit();
  }

  const actions = {
    help: () => toggleDialog("help"),
    escape() {
      const dialog = openDialog();
      if (dialog) return dialog.close();
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
    rank: (key) => rank.set(key),
    unrank: () => rank.clear(),
    next: () => rank.move(1),
    prev: () => rank.move(-1),
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
    } else if (name === "dialog") {
      return toggleDialog(arg);
    } else if (name === "toggle") {
      const box = document.getElementById(arg);
      if (!box) return false;
      box.checked = !box.checked;
    } else if (name === "flag") {
      return rank.flag(arg);
    } else if (name === "score") {
      return rank.score();
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
      const dialog = openDialog();
      const dialogKey = binding.action === "help" || binding.action === "escape" || binding.action.startsWith("dialog:");
      if (dialog && !dialogKey) return;
      if (isTyping(event.target) && !binding.in_text) return;
      if (run(binding.action, event.key, event)) event.preventDefault();
    });
    $$("[data-action=help]").forEach((btn) => btn.addEventListener("click", () => toggleDialog("help")));
    const guidelines = $("#show-guidelines");
    if (guidelines) guidelines.addEventListener("click", () => toggleDialog("guidelines"));
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

  // A live character and word count under a text area (data-count-for="<textarea id>").
  function liveCounts() {
    $$("[data-count-for]").forEach((out) => {
      const area = document.getElementById(out.dataset.countFor);
      if (!area) return;
      const show = () => {
        const chars = area.value.length;
        const words = area.value.trim() ? area.value.trim().split(/\s+/).length : 0;
        out.textContent = `${chars} character${chars === 1 ? "" : "s"} · ${words} word${words === 1 ? "" : "s"}`;
      };
      area.addEventListener("input", show);
      show();
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

  // Paste events in a write form (data-paste-log): when, and how many characters, so reviewers can
  // see an answer that was mostly pasted. Only the counts leave the page, never the clipboard text.
  function pasteLog() {
    $$("form[data-paste-log]").forEach((form) => {
      const area = $("textarea", form);
      const field = form.elements.paste_log;
      if (!area || !field) return;
      const started = performance.now();
      const events = [];
      area.addEventListener("paste", (event) => {
        const text = (event.clipboardData || window.clipboardData).getData("text") || "";
        events.push({ at_ms: Math.round(performance.now() - started), chars: text.length });
      });
      form.addEventListener("submit", () => (field.value = JSON.stringify(events)));
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
    // Coming back with the browser's Back button shows the page from its cache, buttons disabled
    // by the submit above: enable them again so the page is usable (the server decides what happens).
    window.addEventListener("pageshow", (event) => {
      if (!event.persisted) return;
      $$("form[method=post]").forEach((form) => {
        delete form.dataset.sent;
        $$("button[type=submit]", form).forEach((b) => (b.disabled = false));
      });
    });
  }

  // Confirm before a destructive POST (data-confirm="question").
  function confirmations() {
    $$("form[data-confirm]").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) {
          event.preventDefault();
          event.stopImmediatePropagation();
        }
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
      const columns = list.classList.contains("columns");
      const after = columns ? event.clientX > box.left + box.width / 2 : event.clientY > box.top + box.height / 2;
      list.insertBefore(dragged, after ? target.nextSibling : target);
      rank.renumberByPosition();
      rank.select(rank.cards().indexOf(dragged), { action: `Moved ${dragged.dataset.letter}; ranks follow the order.` });
      dragged = null;
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    confirmations();
    bindKeys();
    keepDrafts();
    liveCounts();
    timeOnTask();
    pasteLog();
    guardDoubleSubmit();
    dragRanking();
    layoutToggle();
    rawToggle();
    localTimes();
    if (document.body.dataset.page === "rank") rank.init();
    // The browser applies `autofocus` at its next rendering update, which can come after the
    // first keystroke of a fast typist (the first letter would be lost); focus it now.
    const auto = $("[autofocus]");
    if (auto && (document.activeElement === document.body || !document.activeElement)) auto.focus();
  });
})();
