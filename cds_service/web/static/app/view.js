// The NMS trend view: asks the nms-cds service for its assessment of the launched patient (the service reads
// the EHR's FHIR server with the SMART token and runs the same engine as its cards) and draws it with uPlot.
// No clinical rule lives here: thresholds, onset and criteria all come from the service's answer.
"use strict";

(function () {
  const BAND = { antagonist: "rgba(214, 39, 40, 0.14)", withdrawal: "rgba(31, 119, 180, 0.14)",
    lithium: "rgba(148, 103, 189, 0.14)" };
  const STROKES = ["#c62828", "#1565c0"];
  const HEIGHT = 150;
  const plots = [];

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }

  function seconds(iso) { return iso ? Date.parse(iso) / 1000 : null; }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "—";
  }

  function fail(message) {
    const verdict = $("verdict");
    verdict.textContent = message;
    verdict.className = "error";
    document.body.dataset.state = "error";
  }

  function list(sectionId, listId, items, render) {
    if (!items.length) { return; }
    $(sectionId).hidden = false;
    const ul = $(listId);
    items.forEach(function (item) { ul.appendChild(render(item)); });
  }

  function bandsAndOnset(data) {
    const ws = seconds(data.window.start), we = seconds(data.window.end), onset = seconds(data.onset);
    return {
      drawClear: [function (u) {
        const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
        ctx.save();
        data.exposures.forEach(function (e) {
          const start = Math.max(seconds(e.start) || ws, ws), end = Math.min(seconds(e.end) || we, we);
          if (end <= start) { return; }
          const x0 = u.valToPos(start, "x", true), x1 = u.valToPos(end, "x", true);
          ctx.fillStyle = BAND[e.role] || BAND.antagonist;
          ctx.fillRect(x0, top, Math.max(x1 - x0, 2), height);
        });
        ctx.restore();
      }],
      draw: [function (u) {
        if (onset === null || onset < ws || onset > we) { return; }
        const ctx = u.ctx, x = u.valToPos(onset, "x", true);
        ctx.save();
        ctx.strokeStyle = "#6a1b9a";
        ctx.setLineDash([3, 3]);
        ctx.lineWidth = 1.5 * (window.devicePixelRatio || 1);
        ctx.beginPath();
        ctx.moveTo(x, u.bbox.top);
        ctx.lineTo(x, u.bbox.top + u.bbox.height);
        ctx.stroke();
        ctx.restore();
      }],
    };
  }

  function chart(data, spec) {
    const section = el("section", "chart");
    section.dataset.chart = spec.id;
    const title = el("h2", null, spec.title + " ");
    title.appendChild(el("span", "unit", "(" + spec.unit + ")"));
    section.appendChild(title);
    $("charts").appendChild(section);
    const count = spec.series.reduce(function (n, s) { return n + s.points.length; }, 0);
    section.dataset.points = String(count);
    section.dataset.thresholds = String(spec.thresholds.length);
    const thresholds = el("ul", "thresholds");
    spec.thresholds.forEach(function (t) { thresholds.appendChild(el("li", null, t.label)); });
    if (count === 0) {
      section.appendChild(el("div", "nodata", "no data"));
      section.dataset.nodata = "true";
      return;
    }
    const ws = seconds(data.window.start), we = seconds(data.window.end);
    const times = new Set([ws, we]);
    spec.series.forEach(function (s) { s.points.forEach(function (p) { times.add(seconds(p.t)); }); });
    const xs = Array.from(times).sort(function (a, b) { return a - b; });
    const columns = [xs];
    const series = [{}];
    spec.series.forEach(function (s, i) {
      const byTime = new Map(s.points.map(function (p) { return [seconds(p.t), p.v]; }));
      columns.push(xs.map(function (x) { return byTime.has(x) ? byTime.get(x) : null; }));
      series.push({ label: s.label + (s.points.length ? "" : " (no data)"), stroke: STROKES[i % STROKES.length],
        width: 2, spanGaps: true, points: { show: true, size: 6 } });
    });
    spec.thresholds.forEach(function (t) {
      columns.push(xs.map(function () { return t.value; }));
      series.push({ label: t.label, stroke: "#777", width: 1, dash: [6, 4], points: { show: false } });
    });
    const holder = el("div", "plot");
    section.appendChild(holder);
    const opts = {
      width: Math.max(section.clientWidth - 12, 200), height: HEIGHT,
      scales: { x: { time: true, range: [ws, we] } },
      axes: [{ size: 48 }, { size: 58 }],
      series: series,
      legend: { show: true, live: false },
      cursor: { show: false },
      hooks: bandsAndOnset(data),
    };
    plots.push({ plot: new uPlot(opts, columns, holder), section: section });
  }

  function render(data) {
    const verdict = $("verdict");
    verdict.textContent = data.indicator
      ? "Engine verdict: " + data.indicator + " (possible NMS pattern; see the criteria)"
      : "Engine verdict: no NMS pattern found in the data read";
    verdict.className = data.indicator || "";
    $("onset").textContent = data.onset
      ? "Onset (first " + (data.onset_kind === "ck" ? "CK rise" : "febrile reading") + "): " + when(data.onset)
      : "No onset: no fever or CK rise in the window.";
    list("criteria-section", "criteria", data.criteria, function (c) {
      const li = el("li", c.met === true ? "met" : (c.met === false ? "not-met" : "unknown"));
      li.appendChild(el("strong", null, c.label));
      li.appendChild(document.createTextNode(": " + c.summary));
      li.dataset.criterion = c.name;
      return li;
    });
    list("exposures-section", "exposures", data.exposures, function (e) {
      const li = el("li");
      li.appendChild(el("span", "swatch " + e.role));
      const role = e.role === "withdrawal" ? "dopaminergic (withdrawal)" : (e.role === "antagonist"
        ? "dopamine antagonist" : e.role);
      li.appendChild(document.createTextNode(e.ingredient + " — " + role + (e.draft ? ", draft order" : "") +
        ": " + when(e.start) + " → " + (e.end ? when(e.end) : "ongoing")));
      return li;
    });
    data.charts.forEach(function (spec) { chart(data, spec); });
    const seen = new Set();
    const findings = data.findings.filter(function (f) {
      const fresh = !seen.has(f.summary);
      seen.add(f.summary);
      return fresh;
    });
    list("findings-section", "findings", findings, function (f) {
      return el("li", f.present ? "met" : "not-met", f.summary);
    });
    list("causes-section", "causes", data.other_causes, function (c) {
      const state = c.found === true ? "found" : (c.found === false ? "not found" : "could not be checked");
      const li = el("li", c.found === true ? "met" : (c.found === false ? "not-met" : "unknown"),
        c.label + ": " + state);
      const more = [].concat(c.evidence, c.possible, c.negative);
      if (more.length) { li.appendChild(el("div", "detail", more.join("; "))); }
      return li;
    });
    list("not-read-section", "not-read", data.not_read, function (text) { return el("li", null, text); });
    document.body.dataset.state = "ready";
  }

  window.addEventListener("resize", function () {
    plots.forEach(function (p) { p.plot.setSize({ width: Math.max(p.section.clientWidth - 12, 200), height: HEIGHT }); });
  });

  FHIR.oauth2.ready()
    .then(function (client) {
      const token = client.getState("tokenResponse.access_token");
      const headers = { "Content-Type": "application/json", Accept: "application/json" };
      if (token) { headers.Authorization = "Bearer " + token; }
      return fetch("api/assessment", { method: "POST", headers: headers,
        body: JSON.stringify({ fhirServer: client.state.serverUrl, patient: client.patient.id }) });
    })
    .then(function (response) {
      return response.json().then(function (body) {
        if (response.ok) { return render(body); }
        const issue = body.issue && body.issue[0];
        return fail("The service could not assess the record (" + response.status + "): " +
          (issue ? issue.diagnostics : body.message || body.error));
      });
    })
    .catch(function (error) { fail("The view could not start: " + error.message); });
})();
