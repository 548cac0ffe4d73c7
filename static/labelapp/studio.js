// The admin studio: poll the JSON views while work is running and update the page in place
// (progress bars, ETAs, statuses, round stages, metric charts). No reloads, no innerHTML with
// data: every value goes in through textContent or an attribute. Keys live in labelapp/pages/keymap.py.
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const SVGNS = "http://www.w3.org/2000/svg";

  function setField(root, field, value) {
    $$(`[data-field="${field}"]`, root).forEach((el) => {
      el.textContent = value === null || value === undefined ? "" : String(value);
    });
  }

  function fmt(value) {
    if (typeof value !== "number" || !isFinite(value)) return "—";
    return String(Number(value.toPrecision(4)));
  }

  // ---- polling ----------------------------------------------------------------------------
  // Fetch `url`, hand the JSON to `apply`, which returns the delay before the next fetch in ms
  // (or null to stop). Pause while the tab is hidden; back off on errors.
  function poll(url, apply, onStop) {
    let timer = null;
    let stopped = false;
    let failures = 0;
    let delay = 1000;

    function schedule(ms) {
      if (!stopped && !document.hidden) timer = window.setTimeout(tick, ms);
    }

    async function tick() {
      timer = null;
      try {
        const response = await fetch(url, {
          credentials: "same-origin",
          cache: "no-store",
          headers: { Accept: "application/json" },
        });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const data = await response.json();
        failures = 0;
        const next = apply(data);
        if (next === null) {
          stopped = true;
          if (onStop) onStop();
        } else {
          delay = next;
          schedule(next);
        }
      } catch (err) {
        failures += 1;
        const state = $("#poll-state");
        if (state) state.textContent = `Could not update (${err.message}); trying again.`;
        schedule(Math.min(30000, delay * 2 ** failures));
      }
    }

    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !stopped && timer === null) tick();
    });
    tick();
  }

  // How often the overview asks: every `fast` ms while work runs; while nothing changes it waits
  // twice as long each time, up to `idleMax` (a third of that while a round is open, e.g. waiting
  // for rankings); any change brings it back to 2 s. It never stops, so a round started from
  // another tab, the API or the command line shows up without a reload.
  function pace(fast, idleMax) {
    let idle = 2000;
    let last = null;
    return (data, signature) => {
      const changed = signature !== last;
      last = signature;
      if (data.active) {
        idle = 2000;
        return fast;
      }
      idle = changed ? 2000 : Math.min(data.open ? Math.max(2000, idleMax / 3) : idleMax, idle * 2);
      return idle;
    };
  }

  // ---- runs ------------------------------------------------------------------------------
  function updateRunRow(row, run) {
    setField(row, "status_label", run.status_label);
    const status = $('[data-field="status_label"]', row);
    if (status) status.className = `status status-${run.status}`;
    const bar = $('progress[data-field="percent"]', row);
    if (bar) {
      bar.value = run.percent;
      bar.textContent = `${run.percent}%`;
    }
    setField(row, "steps", `${run.step} / ${run.total || "?"}`);
    setField(row, "eta_text", run.eta_text);
    setField(row, "heartbeat_text", run.heartbeat_text);
    setField(row, "round", run.round ? `Round ${run.round.number}` : "");
    const cancel = $(".run-cancel", row);
    if (cancel) cancel.hidden = run.finished || run.cancel_requested;
    const retry = $(".run-retry", row);
    if (retry) retry.hidden = !run.retryable;
  }

  function newRunRow(run) {
    const template = $("#run-row-template");
    const row = template.content.firstElementChild.cloneNode(true);
    row.dataset.runId = String(run.id);
    const link = $(".run-link", row);
    link.href = run.urls.run;
    link.textContent = `${run.kind_label} run ${run.id}`;
    $('progress[data-field="percent"]', row).setAttribute("aria-label", `Progress of run ${run.id}`);
    $(".run-cancel", row).action = run.urls.run_cancel;
    $(".run-retry", row).action = run.urls.run_retry;
    return row;
  }

  // Any "<name>_text" a payload carries (e.g. a stage's progress) is shown: in its
  // [data-field] element when the page has one, else as a line under `notes`.
  function showTexts(root, item, notes, known) {
    Object.keys(item)
      .filter((key) => key.endsWith("_text") && !known.includes(key))
      .forEach((key) => {
        let el = $(`[data-field="${key}"]`, root);
        if (!el && notes && item[key]) {
          el = document.createElement("p");
          el.className = "meta";
          el.dataset.field = key;
          notes.appendChild(el);
        }
        if (!el) return;
        el.textContent = item[key] || "";
        el.hidden = !item[key];
      });
  }

  // The waiting stage's line: "k / n rankings …" and who holds one of the round's tasks now, from
  // `ranking` ({text, working: [{username}]}) when the payload has it, else `waiting_text`.
  function waitingLine(round) {
    const ranking = round.ranking;
    if (!ranking) return round.waiting_text || "";
    const names = (ranking.working || []).map((w) => w.username);
    return names.length ? `${ranking.text} · working on them now: ${names.join(", ")}` : ranking.text || "";
  }

  function updateRound(article, round) {
    round = { ...round, waiting_text: waitingLine(round), gate_text: round.gate ? round.gate.text : round.gate_text };
    setField(article, "title", `Round ${round.number} · ${round.method_label || round.method}`);
    setField(article, "stage_label", round.stage_label);
    ["error", "evaluation_text", "evaluation_warning", "waiting_text"].forEach((field) => {  // lines shown only when they say something
      setField(article, field, round[field]);
      const el = $(`[data-field="${field}"]`, article);
      if (el) el.hidden = !round[field];
    });
    showTexts(article, round, $(".round-notes", article), ["evaluation_text", "waiting_text"]);
    const actions = $(".round-actions", article);
    if (actions) actions.hidden = round.finished;
    const held = $(".round-held", article);  // the promotion gate held the new policy: promote or discard
    if (held) {
      held.hidden = !(round.gate && round.gate.held);
      if (round.urls && round.urls.promote) {
        $(".round-promote", held).action = round.urls.promote;
        $(".round-discard", held).action = round.urls.discard;
      }
    }
    if (round.urls) {
      const advance = $(".round-advance", article);
      if (advance) advance.action = round.urls.advance;
      const cancel = $(".round-cancel", article);
      if (cancel) {
        cancel.action = round.urls.cancel;
        $("button", cancel).id = `cancel-round-${round.number}`;
      }
    }
    const steps = $(".steps", article);
    if (steps) steps.setAttribute("aria-label", `Stages of round ${round.number}`);
    const runs = $(".round-runs", article);
    if (runs) {
      const parts = [];
      round.runs.forEach((run, i) => {
        if (i) parts.push(" → ");
        const link = document.createElement("a");
        link.href = run.url;
        link.textContent = `${run.kind_label} ${run.id} (${run.status})`;
        parts.push(link);
      });
      runs.replaceChildren(...parts);
    }
    if (!steps) return;
    const items = round.steps.map((step) => {
      const li = document.createElement("li");
      li.className = `step step-${step.state}`;
      li.dataset.stage = step.stage;
      li.textContent = step.label;
      return li;
    });
    steps.replaceChildren(...items);
  }

  function roundArticle(root, round) {
    let article = $(`article[data-round-id="${round.id}"]`, root);
    if (article) return article;
    const template = $("#round-template");
    const list = $("#rounds-list");
    if (!template || !list) return null;
    article = template.content.firstElementChild.cloneNode(true);
    article.dataset.roundId = String(round.id);
    list.prepend(article);  // newest first, as the server renders them
    const empty = $("#no-rounds");
    if (empty) empty.hidden = true;
    return article;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (text !== undefined) td.textContent = text;
    return td;
  }

  const LENGTH_TITLE = "Held-out accuracy where the chosen answer is longer / shorter; share of pairs where the " +
    "model prefers the longer answer, against the “longer wins” baseline; correlation of reward with length in characters";

  function updateModels(models) {
    const body = $("#models-body");
    if (!body) return;
    const template = $("#make-current-template");
    const rows = models.map((version) => {
      const tr = document.createElement("tr");
      tr.dataset.versionId = String(version.id);
      const name = cell();
      const title = document.createElement("span");
      title.dataset.field = "name";
      title.textContent = version.name;
      const when = document.createElement("span");
      when.className = "meta";
      when.textContent = version.created_text;
      name.append(title, document.createElement("br"), when);
      const lineage = cell(undefined, "lineage");
      version.lineage.forEach((v, i) => {
        if (i) lineage.append(" → ");
        if (v.id === version.id) {
          const strong = document.createElement("strong");
          strong.textContent = v.name;
          lineage.append(strong);
        } else lineage.append(v.name);
      });
      const metrics = cell(undefined, "metrics");
      if (!version.metrics.length) metrics.textContent = "—";
      version.metrics.forEach(([key, value]) => {
        const span = document.createElement("span");
        span.className = "metric";
        span.textContent = `${key} ${value}`;
        if (version.metric_help && version.metric_help[key]) span.title = version.metric_help[key];
        metrics.append(span);
      });
      if (version.length_text) {  // a reward model's length diagnostics (labelapp/selectors/length_watch.py)
        const span = document.createElement("span");
        span.className = "metric length-bias";
        span.title = LENGTH_TITLE;
        span.textContent = `Length: ${version.length_text}`;
        metrics.append(document.createElement("br"), span);
      }
      const current = cell(undefined, "current-cell");
      if (version.is_current) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "current";
        current.append(tag);
      } else if (template) {
        const form = template.content.firstElementChild.cloneNode(true);
        form.action = version.make_current_url;
        current.append(form);
      }
      const disk = cell(version.disk_text || "—");
      disk.dataset.field = "disk_text";
      tr.append(name, cell(version.kind_label), lineage, metrics, disk, current);
      return tr;
    });
    body.replaceChildren(...rows);
    $("#models-table").hidden = !models.length;
    $("#no-models").hidden = models.length > 0;
  }

  function updateQueues(queues) {
    queues.forEach((q) => {
      const row = $(`#queues-body tr[data-queue="${q.queue}"]`);
      if (!row) return;
      setField(row, "waiting", q.waiting);
      setField(row, "leased", q.leased === null ? "—" : q.leased);
    });
  }

  function updateThroughput(people) {
    const body = $("#throughput-body");
    if (!body) return;
    body.replaceChildren(
      ...people.map((p) => {
        const tr = document.createElement("tr");
        tr.append(cell(p.username), cell(String(p.day)), cell(String(p.week)),
          cell(`${p.demonstrations} / ${p.rankings} / ${p.comparisons}`));
        return tr;
      }),
    );
    $("#throughput-table").hidden = !people.length;
    $("#no-throughput").hidden = people.length > 0;
  }

  function studioOverview(root) {
    const body = $("#runs-body");
    const state = $("#poll-state");
    const fast = Number(root.dataset.pollMs) || 1000;
    const next = pace(fast, Number(root.dataset.idleMaxMs) || 30000);
    let shown = { models: null, throughput: null };
    poll(root.dataset.statusUrl, (data) => {
      // Newest first, as the server renders them; rows for runs born since the page loaded go on top.
      data.runs
        .slice()
        .reverse()
        .forEach((run) => {
          let row = $(`tr[data-run-id="${run.id}"]`, body);
          if (!row) {
            row = newRunRow(run);
            body.prepend(row);
            const empty = $("#no-runs");
            if (empty) empty.hidden = true;
          }
          updateRunRow(row, run);
        });
      data.rounds
        .slice()
        .reverse()
        .forEach((round) => {
          const article = roundArticle(root, round);
          if (article) updateRound(article, round);
        });
      // Rebuilt only when they change, so a focused "Make current" button keeps its focus.
      const models = JSON.stringify(data.models || []);
      if (data.models && models !== shown.models) updateModels(data.models);
      const people = JSON.stringify(data.throughput || []);
      if (data.throughput && people !== shown.throughput) updateThroughput(data.throughput);
      shown = { models, throughput: people };
      if (data.queues) updateQueues(data.queues);
      const signature = JSON.stringify([data.rounds, data.runs.map((r) => [r.id, r.status, r.step]), models,
        data.queues, people]);
      const delay = next(data, signature);
      if (state) {
        state.textContent = data.active
          ? "Live: updating while work is running."
          : data.open
            ? `A round is waiting; checking again in ${Math.round(delay / 1000)} s.`
            : `Nothing is running; checking again in ${Math.round(delay / 1000)} s.`;
      }
      return delay;
    });
  }

  // ---- charts ----------------------------------------------------------------------------
  const W = 640;
  const H = 200;
  const PAD = { left: 64, right: 14, top: 12, bottom: 30 };

  function svgEl(name, attrs, text) {
    const el = document.createElementNS(SVGNS, name);
    Object.entries(attrs || {}).forEach(([k, v]) => el.setAttribute(k, String(v)));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function scales(points) {
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) x1 = x0 + 1;
    if (y0 === y1) {
      const pad = Math.abs(y0) * 0.1 || 1;
      y0 -= pad;
      y1 += pad;
    }
    const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
    const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
    return { sx, sy, x0, x1, y0, y1 };
  }

  function showCursor(figure) {
    const points = figure.chartPoints || [];
    const svg = $("svg", figure);
    const readout = $(".chart-readout", figure);
    if (!svg || !points.length || figure.cursor === undefined) return;
    const i = Math.max(0, Math.min(figure.cursor, points.length - 1));
    figure.cursor = i;
    const { sx, sy } = scales(points);
    let dot = $(".chart-cursor", svg);
    if (!dot) {
      dot = svgEl("circle", { class: "chart-cursor", r: 4 });
      svg.appendChild(dot);
    }
    dot.setAttribute("cx", String(sx(points[i][0])));
    dot.setAttribute("cy", String(sy(points[i][1])));
    readout.textContent = `step ${points[i][0]}: ${fmt(points[i][1])} (point ${i + 1} of ${points.length})`;
  }

  function chartKeys(event) {
    const figure = event.currentTarget.closest(".chart");
    const n = (figure.chartPoints || []).length;
    if (!n) return;
    const moves = { ArrowRight: 1, ArrowLeft: -1 };
    let cursor = figure.cursor === undefined ? n - 1 : figure.cursor;
    if (event.key in moves) cursor += figure.cursor === undefined ? 0 : moves[event.key];
    else if (event.key === "Home") cursor = 0;
    else if (event.key === "End") cursor = n - 1;
    else return;
    event.preventDefault();
    figure.cursor = cursor;
    showCursor(figure);
  }

  function ensureFigure(container, key) {
    let figure = $$(".chart", container).find((f) => f.dataset.key === key);
    if (!figure) {
      figure = document.createElement("figure");
      figure.className = "chart";
      figure.dataset.key = key;
      const caption = document.createElement("figcaption");
      const name = document.createElement("strong");
      name.textContent = key;
      const summary = document.createElement("span");
      summary.className = "chart-summary";
      caption.append(name, " ", summary);
      figure.appendChild(caption);
      container.appendChild(figure);
    }
    if (!$("svg", figure)) {
      const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", tabindex: 0, role: "img" });
      svg.addEventListener("keydown", chartKeys);
      const readout = document.createElement("p");
      readout.className = "chart-readout hint";
      readout.setAttribute("aria-live", "polite");
      figure.insertBefore(svg, $("figcaption", figure));
      figure.appendChild(readout);
    }
    return figure;
  }

  function drawChart(figure, key, history) {
    const points = [];
    history.forEach((p, i) => {
      const v = p[key];
      if (typeof v === "number" && isFinite(v)) points.push([typeof p.step === "number" ? p.step : i, v]);
    });
    if (!points.length) return;
    figure.chartPoints = points;
    const svg = $("svg", figure);
    const { sx, sy, x0, x1, y0, y1 } = scales(points);
    const ys = points.map((p) => p[1]);
    const count = `${points.length} point${points.length === 1 ? "" : "s"}`;
    const summary = `last ${fmt(ys[ys.length - 1])}, min ${fmt(Math.min(...ys))}, max ${fmt(Math.max(...ys))} (${count})`;
    $(".chart-summary", figure).textContent = summary;
    svg.setAttribute("aria-label", `${key}: ${summary}. Use the arrow keys to read each point.`);
    const bottom = H - PAD.bottom;
    svg.replaceChildren(
      svgEl("line", { class: "chart-axis", x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: bottom }),
      svgEl("line", { class: "chart-axis", x1: PAD.left, y1: bottom, x2: W - PAD.right, y2: bottom }),
      svgEl("text", { class: "chart-label", x: PAD.left - 6, y: PAD.top + 10, "text-anchor": "end" }, fmt(y1)),
      svgEl("text", { class: "chart-label", x: PAD.left - 6, y: bottom, "text-anchor": "end" }, fmt(y0)),
      svgEl("text", { class: "chart-label", x: PAD.left, y: H - 8, "text-anchor": "start" }, `step ${x0}`),
      svgEl("text", { class: "chart-label", x: W - PAD.right, y: H - 8, "text-anchor": "end" }, `step ${x1}`),
      svgEl("polyline", {
        class: "chart-line",
        points: points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "),
      }),
    );
    // A line needs two points: a single one (a one-step run) is drawn as a dot.
    if (points.length === 1) {
      svg.appendChild(svgEl("circle", { class: "chart-point", r: 4, cx: sx(points[0][0]).toFixed(1), cy: sy(points[0][1]).toFixed(1) }));
    }
    showCursor(figure);
  }

  function runDetail(root) {
    const charts = $("#charts");
    const row = $(".run-row", root);
    const state = $("#poll-state");
    let first = true;
    const fast = Number(root.dataset.pollMs) || 1000;
    poll(root.dataset.runUrl, (run) => {
      if (row) updateRunRow(row, run);
      setField(root, "attempts", `${run.attempts}`);
      if (run.round) setField(root, "round_stage", run.round.stage_label);
      setField(root, "logs_tail", run.logs_tail || "");
      const notes = $("#run-notes");
      if (notes) notes.hidden = !run.logs_tail;
      setField(root, "error", run.error);
      const error = $('[data-field="error"]', root);
      if (error) error.hidden = !run.error;
      if (run.length_watch) {
        [["length_warning", run.length_watch.warning], ["length_trend", run.length_watch.trend_text]].forEach(([field, text]) => {
          setField(root, field, text);
          const el = $(`[data-field="${field}"]`, root);
          if (el) el.hidden = !text;
        });
      }
      run.metric_keys.forEach((key) => drawChart(ensureFigure(charts, key), key, run.history));
      $("#no-metrics").hidden = run.metric_keys.length > 0;
      const more = !run.finished;
      if (state && (first || !more)) state.textContent = more ? "Live: updating while the run works." : "This run has ended.";
      first = false;
      return more ? fast : null;
    });
  }

  // The round form's settings show the policy defaults of the selected method: switching the method
  // puts the other method's defaults in `policy` (the rest of the JSON is kept as typed).
  function roundForm(form) {
    const method = $("#round-method", form);
    const box = $("#round-settings", form);
    if (!method || !box || !box.dataset.policyDefaults) return;
    const defaults = JSON.parse(box.dataset.policyDefaults);
    method.addEventListener("change", () => {
      let settings;
      try {
        settings = JSON.parse(box.value || "{}");
      } catch (err) {
        return;  // the server names the JSON error on submit
      }
      if (!settings || typeof settings !== "object" || Array.isArray(settings) || !defaults[method.value]) return;
      settings.policy = defaults[method.value];
      box.value = JSON.stringify(settings, null, 2);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const overview = $("#studio");
    const form = $("#round-form");
    if (form) roundForm(form);
    if (overview) studioOverview(overview);
    const run = $("#run");
    if (run) runDetail(run);
  });
})();
