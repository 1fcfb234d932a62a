// llmpi landscape viewer: the controls around a plotly figure built from the surface data embedded in the page.
// Written by `python -m llmpi.plot FILES --kind html`; works offline (plotly.js is inline, nothing is fetched).
// Every control changes `state`, and render() redraws the figure from the raw values with Plotly.react, which
// keeps the camera (uirevision) so comparing settings does not lose the view.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("llmpi-data").textContent);
  const gd = document.getElementById("plot");
  const $ = (id) => document.getElementById(id);
  const is2d = data.ndim === 2;

  // Single-hue scales so overlaid landscapes stay told apart; one landscape gets viridis (dark = low).
  const SCALES = [
    [[0, "#08306b"], [0.5, "#4292c6"], [1, "#deebf7"]],
    [[0, "#7f2704"], [0.5, "#f16913"], [1, "#fee6ce"]],
    [[0, "#00441b"], [0.5, "#41ab5d"], [1, "#e5f5e0"]],
    [[0, "#3f007d"], [0.5, "#807dba"], [1, "#efedf5"]],
    [[0, "#67000d"], [0.5, "#ef3b2c"], [1, "#fee0d2"]],
    [[0, "#252525"], [0.5, "#737373"], [1, "#f0f0f0"]],
  ];
  const LINE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#555555"];

  const state = {
    quantity: data.initial.quantity,
    log: data.initial.log,
    clip: Object.assign({}, data.initial.clip), // per value: number, or null for no clipping
    surface: true,
    wireframe: false,
    floor: true,
    marks: true,
    opacity: 1,
    visible: data.layers.map(() => true),
    view: "perspective",
    views: 0, // counts view changes: each one re-applies the camera of `view`
  };
  const VIEWS = {
    perspective: data.camera,
    // straight down, no perspective: the landscape as a contour map, α to the right and β up
    top: { eye: { x: 0, y: 0, z: 2.5 }, up: { x: 0, y: 1, z: 0 }, center: { x: 0, y: 0, z: 0 }, projection: { type: "orthographic" } },
  };

  const pretty = (name) => {
    const i = name.indexOf("_");
    const what = name.slice(i + 1);
    return name.slice(0, i) + " " + (what === "acc" ? "accuracy" : what);
  };
  const unit = (name) => (name.endsWith("_acc") ? " %" : "");
  const num = (v) => (v === null || v === undefined || !Number.isFinite(v) ? "—" : String(+v.toPrecision(6)));

  // ---- values -> heights --------------------------------------------------------------------------------------
  function transform(v, clip) {
    if (v === null || !Number.isFinite(v)) return null;
    if (clip !== null && v > clip) v = clip;
    if (state.log) return v > 0 ? Math.log10(v) : null;
    return v;
  }
  const map = (arr, f) => (is2d ? arr.map((row) => row.map(f)) : arr.map(f));

  function heights(layer, name) {
    const values = layer.values[name];
    if (!values) return null;
    const clip = state.clip[name] === undefined ? null : state.clip[name];
    return map(values, (v) => transform(v, clip));
  }

  function range(list) {
    let lo = Infinity, hi = -Infinity;
    for (const z of list) {
      if (!z) continue;
      for (const v of is2d ? z.flat() : z) {
        if (v === null) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (!Number.isFinite(lo)) return [0, 1];
    if (hi <= lo) hi = lo + Math.max(Math.abs(lo) * 1e-3, 1e-9);
    return [lo, hi];
  }

  // The hover text of every point: all values the file holds, in their own units.
  function hoverText(layer) {
    const names = Object.keys(layer.values);
    const at = (j, i) =>
      (is2d ? `α = ${num(layer.x[i])}, β = ${num(layer.y[j])}` : `α = ${num(layer.x[i])}`) +
      names.map((n) => `<br>${pretty(n)} = ${num(is2d ? layer.values[n][j][i] : layer.values[n][i])}${unit(n)}`).join("");
    if (!is2d) return layer.x.map((_, i) => at(0, i));
    return layer.y.map((_, j) => layer.x.map((_, i) => at(j, i)));
  }
  data.layers.forEach((layer) => { layer.text = hoverText(layer); });

  function nearest(axis, v) {
    let best = 0;
    for (let i = 1; i < axis.length; i++) if (Math.abs(axis[i] - v) < Math.abs(axis[best] - v)) best = i;
    return best;
  }

  // ---- traces -------------------------------------------------------------------------------------------------
  // Wireframe and floor contours are line traces computed here rather than plotly's surface contours: those take
  // tens of seconds to draw on a surface with gaps (a partial file), these take milliseconds.
  function surfaceTraces(visibleZ, lo, hi, floor) {
    const traces = [];
    const several = data.layers.length > 1;
    const ticks = state.log ? logTicks(lo, hi) : undefined; // powers of ten, labelled with the value itself
    let bar = 0;
    data.layers.forEach((layer, n) => {
      const z = visibleZ[n];
      if (!z) return;
      const scale = several ? SCALES[n % SCALES.length] : "Viridis";
      const showBar = state.visible[n];
      traces.push({
        type: "surface", name: layer.label, uid: "surface-" + n,
        // hoverinfo, not a hovertemplate: plotly.js looks surface text up as text[row][column] only on this path
        x: layer.x, y: layer.y, z: z, text: layer.text, hoverinfo: "text+name",
        colorscale: scale, cmin: lo, cmax: hi, showscale: showBar,
        colorbar: {
          title: { text: several ? layer.label : (state.log ? "log10 " : "") + pretty(state.quantity) + unit(state.quantity), side: "right" },
          x: 1.0 + 0.09 * bar, len: several ? 0.55 : 0.75, thickness: 14,
          tickvals: ticks, ticktext: ticks && ticks.map((t) => num(10 ** t)),
        },
        opacity: state.opacity, hidesurface: !state.surface, visible: state.visible[n],
        connectgaps: false,
        lighting: { ambient: 0.75, diffuse: 0.6, specular: 0.05, roughness: 0.9 },
      });
      if (showBar) bar += 1;
    });
    data.layers.forEach((layer, n) => {
      const z = visibleZ[n];
      if (!z || !state.visible[n]) return;
      if (state.wireframe) traces.push(wireTrace(layer, z, (hi - lo) * 0.002, n));
      if (state.floor) traces.push(floorTrace(layer, z, lo, hi, floor, several ? SCALES[n % SCALES.length] : "Viridis", n));
    });
    return traces;
  }

  // The mesh's rows (constant β) and columns (constant α) through the computed points; null breaks a line at a gap.
  function wireTrace(layer, z, lift, n) {
    const xs = [], ys = [], zs = [];
    const add = (i, j) => {
      const h = z[j][i];
      xs.push(h === null ? null : layer.x[i]);
      ys.push(h === null ? null : layer.y[j]);
      zs.push(h === null ? null : h + lift);
    };
    const gap = () => { xs.push(null); ys.push(null); zs.push(null); };
    for (let j = 0; j < layer.y.length; j++) { for (let i = 0; i < layer.x.length; i++) add(i, j); gap(); }
    for (let i = 0; i < layer.x.length; i++) { for (let j = 0; j < layer.y.length; j++) add(i, j); gap(); }
    return {
      type: "scatter3d", mode: "lines", name: "wireframe — " + layer.label, uid: "wire-" + n, x: xs, y: ys, z: zs,
      connectgaps: false, hoverinfo: "skip", showlegend: false, line: { color: "#1a1a1a", width: 1.5 },
    };
  }

  // Contour lines of the heights, by marching squares over the grid's computed cells, drawn flat at z = floor.
  function floorTrace(layer, z, lo, hi, floor, scale, n) {
    const xs = [], ys = [], zs = [], cs = [];
    const levels = [];
    for (let k = 1; k < 20; k++) levels.push(lo + ((hi - lo) * k) / 20);
    const X = layer.x, Y = layer.y;
    const pieces = {};
    const cut = (xa, ya, va, xb, yb, vb, level) => {
      const t = (level - va) / (vb - va);
      return [xa + t * (xb - xa), ya + t * (yb - ya)];
    };
    for (let j = 0; j + 1 < Y.length; j++) {
      for (let i = 0; i + 1 < X.length; i++) {
        const v00 = z[j][i], v10 = z[j][i + 1], v01 = z[j + 1][i], v11 = z[j + 1][i + 1];
        if (v00 === null || v10 === null || v01 === null || v11 === null) continue;
        const cellLo = Math.min(v00, v10, v01, v11), cellHi = Math.max(v00, v10, v01, v11);
        for (const level of levels) {
          if (level < cellLo || level > cellHi) continue;
          const up = (v) => v >= level;
          const bottom = up(v00) !== up(v10) ? cut(X[i], Y[j], v00, X[i + 1], Y[j], v10, level) : null;
          const right = up(v10) !== up(v11) ? cut(X[i + 1], Y[j], v10, X[i + 1], Y[j + 1], v11, level) : null;
          const top = up(v01) !== up(v11) ? cut(X[i], Y[j + 1], v01, X[i + 1], Y[j + 1], v11, level) : null;
          const left = up(v00) !== up(v01) ? cut(X[i], Y[j], v00, X[i], Y[j + 1], v01, level) : null;
          const hits = [bottom, right, top, left].filter((p) => p !== null);
          let segments;
          if (hits.length === 2) segments = [hits];
          else if (hits.length === 4) {
            // a saddle: the centre decides which pair of opposite corners is joined
            const joined = up((v00 + v10 + v01 + v11) / 4) === up(v00);
            segments = joined ? [[bottom, right], [top, left]] : [[left, bottom], [right, top]];
          } else continue;
          (pieces[level] = pieces[level] || []).push(...segments);
        }
      }
    }
    for (const level of levels) {
      for (const line of chain(pieces[level] || [])) {
        for (const p of line) { xs.push(p[0]); ys.push(p[1]); zs.push(floor); cs.push(level); }
        xs.push(null); ys.push(null); zs.push(null); cs.push(level);
      }
    }
    return {
      type: "scatter3d", mode: "lines", name: "floor contours — " + layer.label, uid: "floor-" + n,
      x: xs, y: ys, z: zs, connectgaps: false, hoverinfo: "skip", showlegend: false,
      line: Array.isArray(scale)
        ? { color: scale[1][1], width: 2 } // overlaid landscapes: one colour each, to tell them apart
        : { color: cs, colorscale: scale, cmin: lo, cmax: hi, width: 2 },
    };
  }

  // Segments [[p, q], ...] joined end to end into polylines (two cells share the crossing point of their edge).
  function chain(segments) {
    const key = (p) => p[0].toPrecision(12) + "," + p[1].toPrecision(12);
    const at = new Map();
    segments.forEach((s, k) => s.forEach((p) => {
      const id = key(p);
      if (!at.has(id)) at.set(id, []);
      at.get(id).push(k);
    }));
    const used = new Uint8Array(segments.length);
    const next = (p) => (at.get(key(p)) || []).find((k) => !used[k]);
    const lines = [];
    segments.forEach((s, k) => {
      if (used[k]) return;
      used[k] = 1;
      const line = [s[0], s[1]];
      for (const forward of [true, false]) {
        for (;;) {
          const end = forward ? line[line.length - 1] : line[0];
          const m = next(end);
          if (m === undefined) break;
          used[m] = 1;
          const [a, b] = segments[m];
          const other = key(a) === key(end) ? b : a;
          if (forward) line.push(other); else line.unshift(other);
        }
      }
      lines.push(line);
    });
    return lines;
  }

  function overlayTraces(visibleZ, lift) {
    // Marks sit a little above the surface so its own pixels do not hide them.
    const traces = [];
    if (!state.marks) return traces;
    data.layers.forEach((layer, n) => {
      const z = visibleZ[n];
      if (!z || !state.visible[n]) return;
      for (const mark of (layer.overlays[state.quantity] || [])) {
        const xs = [], ys = [], zs = [], texts = [];
        mark.x.forEach((a, k) => {
          const i = nearest(layer.x, a);
          const j = is2d ? nearest(layer.y, mark.y[k]) : 0;
          const h = is2d ? z[j][i] : z[i];
          if (h === null) return;
          xs.push(a); ys.push(is2d ? mark.y[k] : 0); zs.push(h + lift);
          texts.push(mark.label + "<br>" + (is2d ? layer.text[j][i] : layer.text[i]));
        });
        if (!xs.length) continue;
        const path = mark.kind === "path";
        const symbol = mark.marker === "X" ? "x" : "diamond";
        traces.push(is2d ? {
          type: "scatter3d", mode: path ? "lines+markers" : "markers+text", name: mark.label + " — " + layer.label,
          x: xs, y: ys, z: zs, hovertext: texts, hoverinfo: "text", showlegend: false,
          text: xs.map(() => mark.tag), textposition: "top center", textfont: { color: mark.color, size: 13 },
          marker: { size: 7, symbol: symbol, color: mark.color, line: { color: "white", width: 1 } },
          line: { color: mark.color, width: 4 },
        } : {
          type: "scatter", mode: path ? "lines+markers" : "markers", name: mark.label, x: xs, y: zs,
          text: texts, hovertemplate: "%{text}<extra></extra>", showlegend: false,
          marker: { size: 11, symbol: mark.marker === "X" ? "x" : "star", color: mark.color },
        });
      }
    });
    return traces;
  }

  function logTicks(lo, hi) {
    const ticks = [];
    for (let t = Math.ceil(lo); t <= Math.floor(hi); t++) ticks.push(t);
    return ticks.length >= 2 ? ticks : undefined;
  }

  function lineTraces() {
    // 1D: every value of every landscape against α; losses on the left axis, accuracies on the right.
    const traces = [];
    data.layers.forEach((layer, n) => {
      for (const name of Object.keys(layer.values)) {
        const acc = name.endsWith("_acc");
        const test = name.startsWith("test");
        const clip = acc ? null : (state.clip[name] === undefined ? null : state.clip[name]);
        traces.push({
          type: "scatter", mode: "lines", name: (data.layers.length > 1 ? layer.label + ": " : "") + pretty(name),
          x: layer.x, y: layer.values[name].map((v) => (acc ? (Number.isFinite(v) ? v : null) : (v === null ? null : (clip !== null && v > clip ? clip : v)))),
          yaxis: acc ? "y2" : "y", visible: state.visible[n],
          text: layer.text, hovertemplate: "%{text}<extra>" + layer.label + "</extra>",
          line: { color: LINE_COLOURS[n % LINE_COLOURS.length], dash: acc ? (test ? "dashdot" : "dot") : (test ? "dash" : "solid"), width: 2 },
        });
      }
    });
    return traces;
  }

  // ---- figure -------------------------------------------------------------------------------------------------
  function figureTitle() {
    if (data.layers.length === 1) return data.layers[0].titles[is2d ? state.quantity : "none"];
    return data.layers.length + " landscapes" + (is2d ? " — " + pretty(state.quantity) : "") +
      (data.synthetic ? " — SYNTHETIC data" : "");
  }

  function render() {
    let traces, layout;
    const axisTitle = (t) => ({ text: t });
    if (is2d) {
      const visibleZ = data.layers.map((layer) => heights(layer, state.quantity));
      const [lo, hi] = range(visibleZ.filter((z, n) => state.visible[n]));
      const floor = lo - (hi - lo) * 0.12; // contours lie on the floor, a little below the lowest point
      traces = surfaceTraces(visibleZ, lo, hi, floor).concat(overlayTraces(visibleZ, (hi - lo) * 0.015));
      const zt = (state.log ? "log10 " : "") + pretty(state.quantity) + unit(state.quantity);
      // the box's floor a little lower still: lines drawn exactly on it would flicker through its plane
      const zaxis = { title: axisTitle(zt), range: [floor - (hi - lo) * 0.03, hi + (hi - lo) * 0.02] };
      const ticks = state.log ? logTicks(lo, hi) : undefined;
      if (ticks) Object.assign(zaxis, { tickvals: ticks, ticktext: ticks.map((t) => num(10 ** t)) });
      layout = {
        title: { text: figureTitle(), font: { size: 14 } },
        uirevision: "view-" + state.views,
        margin: { l: 0, r: 0, t: 40, b: 0 },
        showlegend: false,
        scene: {
          uirevision: "view-" + state.views, // a new value applies `camera`; otherwise the user's view is kept
          xaxis: { title: axisTitle(data.axes.x) }, yaxis: { title: axisTitle(data.axes.y) }, zaxis: zaxis,
          aspectmode: "manual", aspectratio: { x: 1, y: data.aspect, z: 0.7 },
          camera: VIEWS[state.view],
        },
        hoverlabel: { align: "left" },
      };
    } else {
      traces = lineTraces().concat(overlayTraces(data.layers.map((l) => l.values[state.quantity] || null), 0));
      layout = {
        title: { text: figureTitle(), font: { size: 14 } },
        uirevision: "view-" + state.views,
        xaxis: { title: axisTitle(data.axes.x) },
        yaxis: { title: axisTitle("loss"), type: state.log ? "log" : "linear" },
        yaxis2: { title: axisTitle("accuracy (%)"), overlaying: "y", side: "right", range: [0, 100], tickmode: "auto", showgrid: false },
        legend: { orientation: "h", y: -0.2 },
        hovermode: "closest",
        hoverlabel: { align: "left" },
      };
    }
    return Plotly.react(gd, traces, layout, { responsive: true, displaylogo: false, scrollZoom: true })
      .then(() => {
        window.llmpiViewer.renders += 1;
        window.llmpiViewer.ready = true;
      });
  }

  // ---- controls -----------------------------------------------------------------------------------------------
  function buildControls() {
    $("title").textContent = data.layers.length === 1 ? data.layers[0].label : data.layers.length + " landscapes";
    $("formula").textContent = data.formula;
    $("warning").textContent = data.synthetic ? "SYNTHETIC data (not CIFAR-10)" : "";
    const select = $("quantity");
    for (const name of data.quantities) {
      const opt = document.createElement("option");
      opt.value = name;
      opt.textContent = pretty(name) + unit(name);
      select.appendChild(opt);
    }
    select.value = state.quantity;
    if (!is2d) select.style.display = $("value-heading").style.display = "none";
    select.addEventListener("change", () => {
      state.quantity = select.value;
      syncClip();
      render();
    });
    data.layers.forEach((layer, n) => {
      const box = document.createElement("div");
      box.className = "layer";
      const label = document.createElement("label");
      label.className = "row";
      const check = document.createElement("input");
      check.type = "checkbox";
      check.checked = true;
      check.id = "layer-" + n;
      check.addEventListener("change", () => { state.visible[n] = check.checked; render(); });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      const scale = data.layers.length > 1 ? SCALES[n % SCALES.length] : null;
      swatch.style.background = is2d
        ? (scale ? `linear-gradient(90deg, ${scale.map((s) => s[1]).join(", ")})` : "linear-gradient(90deg, #440154, #21918c, #fde725)")
        : LINE_COLOURS[n % LINE_COLOURS.length];
      const name = document.createElement("span");
      name.textContent = layer.label;
      label.append(check, swatch, name);
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = layer.description;
      box.append(label, meta);
      if (layer.done < layer.total) {
        const partial = document.createElement("div");
        partial.className = "meta partial";
        partial.textContent = `${layer.done} of ${layer.total} points (partial: the rest is blank)`;
        box.append(partial);
      }
      $("layers").appendChild(box);
    });
    const bind = (id, key, prop) => $(id).addEventListener(prop === "checked" ? "change" : "input", () => {
      state[key] = prop === "checked" ? $(id).checked : Number($(id).value);
      render();
    });
    bind("surface", "surface", "checked");
    bind("wireframe", "wireframe", "checked");
    bind("floor", "floor", "checked");
    bind("marks", "marks", "checked");
    bind("log", "log", "checked");
    bind("opacity", "opacity", "value");
    $("log").checked = state.log;
    if (!is2d) {
      for (const id of ["surface", "wireframe", "floor", "opacity"]) $(id).closest("label").style.display = "none";
    }
    $("clipOn").addEventListener("change", () => {
      state.clip[state.quantity] = $("clipOn").checked ? Number($("clip").value) : null;
      render();
    });
    $("clip").addEventListener("change", () => {
      const v = Number($("clip").value);
      if (!Number.isFinite(v)) return;
      $("clipOn").checked = true;
      state.clip[state.quantity] = v;
      render();
    });
    // Views go through render() (Plotly.react with a new uirevision), not Plotly.relayout, which leaves the
    // 3D scene's hover picking dead in headless Chromium.
    const view = (name) => () => { state.view = name; state.views += 1; render(); };
    $("reset").addEventListener("click", view("perspective"));
    $("top").addEventListener("click", view("top"));
    if (!is2d) $("top").style.display = "none";
    syncClip();
  }

  function syncClip() {
    const clip = state.clip[state.quantity];
    $("clipOn").checked = clip !== null && clip !== undefined;
    const suggestion = data.initial.suggestedClip[state.quantity];
    $("clip").value = clip !== null && clip !== undefined ? clip : (suggestion === undefined ? "" : suggestion);
  }

  window.llmpiViewer = { ready: false, renders: 0, state: state, render: render, data: data };
  buildControls();
  render();
})();
