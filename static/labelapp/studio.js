// The admin studio: poll the JSON views while work is running and update the page in place
// (progress bars, ETAs, statuses, round stages, metric charts). No reloads, no innerHTML with
// data: every value goes in through textContent or an attribute. Keys live in labelapp/keymap.py.
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
  // Fetch `url` every `interval` ms while `apply(data)` returns true; pause while the tab is
  // hidden; back off on errors.
  function poll(url, interval, apply, onStop) {
    let timer = null;
    let stopped = false;
    let failures = 0;

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
        if (apply(data)) schedule(interval);
        else {
          stopped = true;
          if (onStop) onStop();
        }
      } catch (err) {
        failures += 1;
        const state = $("#poll-state");
        if (state) state.textContent = `Could not update (${err.message}); trying again.`;
        schedule(Math.min(30000, interval * 2 ** failures));
      }
    }

    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !stopped && timer === null) tick();
    });
    tick();
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

  function updateRound(article, round) {
    setField(article, "stage_label", round.stage_label);
    ["error", "evaluation_text", "evaluation_warning"].forEach((field) => {  // lines shown only when they say something
      setField(article, field, round[field]);
      const el = $(`[data-field="${field}"]`, article);
      if (el) el.hidden = !round[field];
    });
    const actions = $(".round-actions", article);
    if (actions) actions.hidden = round.finished;
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
    const list = $(".steps", article);
    if (!list) return;
    const items = round.steps.map((step) => {
      const li = document.createElement("li");
      li.className = `step step-${step.state}`;
      li.dataset.stage = step.stage;
      li.textContent = step.label;
      return li;
    });
    list.replaceChildren(...items);
  }

  function studioOverview(root) {
    const body = $("#runs-body");
    const state = $("#poll-state");
    poll(
      root.dataset.statusUrl,
      Number(root.dataset.pollMs) || 1000,
      (data) => {
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
        data.rounds.forEach((round) => {
          const article = $(`article[data-round-id="${round.id}"]`, root);
          if (article) updateRound(article, round);
        });
        if (state) state.textContent = data.active ? "Live: updating while work is running." : "Nothing is running.";
        return data.active;
      },
    );
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
    const summary = `last ${fmt(ys[ys.length - 1])}, min ${fmt(Math.min(...ys))}, max ${fmt(Math.max(...ys))} (${points.length} points)`;
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
    showCursor(figure);
  }

  function runDetail(root) {
    const charts = $("#charts");
    const row = $(".run-row", root);
    const state = $("#poll-state");
    let first = true;
    poll(root.dataset.runUrl, Number(root.dataset.pollMs) || 1000, (run) => {
      if (row) updateRunRow(row, run);
      setField(root, "attempts", `${run.attempts}`);
      if (run.round) setField(root, "round_stage", run.round.stage_label);
      setField(root, "logs_tail", run.logs_tail || "(no output yet)");
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
      return more;
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const overview = $("#studio");
    if (overview) studioOverview(overview);
    const run = $("#run");
    if (run) runDetail(run);
  });
})();
