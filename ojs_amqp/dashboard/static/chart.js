// Throughput and failures over time, drawn with the vendored uPlot (MIT, uplot.LICENSE.txt).

import uPlot from "./uplot.esm.js";

export function throughputChart(container) {
  const width = () => Math.max(280, container.clientWidth - 8);
  const plot = new uPlot({
    width: width(),
    height: 220,
    series: [
      {},
      { label: "completed / min", stroke: "#2358c7", width: 2 },
      { label: "failed / min", stroke: "#b3261e", width: 2 },
    ],
    axes: [{}, { label: "jobs per minute" }],
    scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
  }, [[], [], []], container);
  const resize = () => plot.setSize({ width: width(), height: 220 });
  window.addEventListener("resize", resize);
  return {
    // points: [{t: seconds, processed, failed}] (per minute)
    update(points) {
      plot.setData([points.map((p) => p.t), points.map((p) => p.processed),
        points.map((p) => p.failed)]);
    },
    destroy() {
      window.removeEventListener("resize", resize);
      plot.destroy();
    },
  };
}
