// A sync task's statistics charts (uPlot): objects per interval (REQUEST, SUCCESS, FAILURE, SKIP) and bytes per
// interval (SIZE), fetched from the page's /statistics URL and refreshed every 10 s.
(function () {
  "use strict";
  var COLORS = { REQUEST: "#1f6feb", SUCCESS: "#1a7f37", FAILURE: "#c0362c", SKIP: "#b26b00", SIZE: "#6e40c9" };
  var plots = {};

  function bytes(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(1)) + " " + units[i];
  }

  function width(el) { return Math.max(280, el.clientWidth || 600); }

  function draw(el, key, data, series) {
    if (plots[key]) { plots[key].setData(data); return; }
    var opts = {
      width: width(el), height: 220,
      series: [{}].concat(series.map(function (name) {
        return { label: name, stroke: COLORS[name], width: 2, points: { show: data[0].length < 60 } };
      })),
      axes: [{}, key === "size" ? { size: 70, values: function (u, splits) { return splits.map(bytes); } } : { size: 70 }],
      scales: { x: { time: true } },
      // The page speaks UTC (counters by UTC month, times as UTC): so does the time axis.
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
    };
    plots[key] = new uPlot(opts, data, el);
    el.setAttribute("data-drawn", "true");
  }

  function render(box, json) {
    var counts = ["REQUEST", "SUCCESS", "FAILURE", "SKIP"];
    var data = [json.times].concat(counts.map(function (k) { return json.counts[k]; }));
    draw(box.counts, "counts", data, counts);
    if (box.size) { draw(box.size, "size", [json.times, json.sizes], ["SIZE"]); }
    Object.keys(json.totals || {}).forEach(function (k) {
      var span = document.querySelector("[data-total='" + k + "']");
      if (span && k !== "SIZE") { span.textContent = String(json.totals[k]); }
    });
    box.counts.setAttribute("data-points", String(json.times.length));
    box.counts.setAttribute("data-request-total", String((json.totals || {}).REQUEST || 0));
  }

  function load(box) {
    fetch(box.counts.getAttribute("data-src"), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (json) { if (json) { render(box, json); } })
      .catch(function () { /* the next refresh tries again */ });
  }

  function init() {
    var counts = document.getElementById("chart-counts");
    if (!counts || typeof uPlot === "undefined") { return; }
    var box = { counts: counts, size: document.getElementById("chart-size") };
    load(box);
    setInterval(function () { if (!document.hidden) { load(box); } }, 10000);
    window.addEventListener("resize", function () {
      Object.keys(plots).forEach(function (k) {
        var el = k === "counts" ? box.counts : box.size;
        plots[k].setSize({ width: width(el), height: 220 });
      });
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
