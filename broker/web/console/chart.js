// A small SVG line chart: one or more series of numbers, newest last, scaled to the box.
const NS = "http://www.w3.org/2000/svg";

/** Draws `series` ([{values: number[], cls: string}]) into `svg` (viewBox 300x100). */
export function drawChart(svg, series) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = 300, h = 100, pad = 4;
  const all = series.flatMap((s) => s.values);
  const max = Math.max(1, ...all);
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const x = (i) => pad + (i * (w - 2 * pad)) / (n - 1);
  const y = (v) => h - pad - (v / max) * (h - 2 * pad);
  const axis = document.createElementNS(NS, "line");
  axis.setAttribute("x1", pad); axis.setAttribute("x2", w - pad);
  axis.setAttribute("y1", h - pad); axis.setAttribute("y2", h - pad);
  axis.setAttribute("class", "axis");
  svg.appendChild(axis);
  const top = document.createElementNS(NS, "text");
  top.setAttribute("x", pad); top.setAttribute("y", 12);
  top.setAttribute("class", "scale");
  top.textContent = String(Math.round(max * 100) / 100);
  svg.appendChild(top);
  for (const s of series) {
    const path = document.createElementNS(NS, "polyline");
    path.setAttribute("points", s.values.map((v, i) => `${x(i)},${y(v)}`).join(" "));
    path.setAttribute("class", `line ${s.cls || ""}`);
    svg.appendChild(path);
    if (s.values.length) {
      const dot = document.createElementNS(NS, "circle");
      dot.setAttribute("cx", x(s.values.length - 1));
      dot.setAttribute("cy", y(s.values.at(-1)));
      dot.setAttribute("r", 2.5);
      dot.setAttribute("class", `dot ${s.cls || ""}`);
      svg.appendChild(dot);
    }
  }
  // What the chart shows now, for people hovering and for tests.
  svg.dataset.last = series.map((s) => s.values.at(-1) ?? "").join(",");
}
