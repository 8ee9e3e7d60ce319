// Ferry console behaviour: confirmations and the live task page. No inline scripts (the page's CSP forbids them).
(function () {
  "use strict";

  // <form data-confirm="..."> asks before it is sent.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); }
  }, true);

  var LIVE_EVERY_MS = 2000;   // counters and progress
  var CHART_EVERY_MS = 10000; // the speed chart (one grouped scan of the task's results)...
  var CHART_COST_FACTOR = 20; // ...or less often on a run so big that the scan takes more than half a second

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401 || r.redirected) { window.location.reload(); throw new Error("signed out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      });
  }

  function fmtTime(sec) {
    var d = new Date(sec * 1000);
    return d.toISOString().substring(11, 19);
  }

  // The speed chart: MiB/s and objects/s per bucket of the run, from /console/tasks/{id}/speed.
  function SpeedChart(el) {
    this.el = el;
    this.plot = null;
    this.empty = document.getElementById("speed-empty");
  }
  SpeedChart.prototype.width = function () { return Math.max(this.el.clientWidth, 280); };
  SpeedChart.prototype.load = function () {
    var self = this;
    var began = Date.now();
    return getJSON(this.el.getAttribute("data-src")).then(function (d) {
      self.took = Date.now() - began;
      var data = [d.t, d.mib, d.objects];
      // One bucket is a dot, not a chart: wait for a second one.
      if (self.empty) { self.empty.hidden = d.t.length > 1; }
      if (!window.uPlot || d.t.length < 2) { return; }
      if (self.plot) { self.plot.setData(data); return; }
      self.plot = new window.uPlot({
        width: self.width(), height: 220,
        scales: { x: { time: true }, objs: {} },
        series: [
          { value: function (u, v) { return v == null ? "" : fmtTime(v); } },
          { label: "MiB/s", stroke: "#1f6feb", fill: "rgba(31,111,235,0.12)", width: 2 },
          { label: "objects/s", stroke: "#1a7f37", width: 1.5, scale: "objs" }
        ],
        axes: [
          // Whole seconds at least: the buckets are whole seconds, and half-second ticks repeat their labels.
          { incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400],
            values: function (u, ticks) { return ticks.map(fmtTime); } },
          { label: "MiB/s" },
          { side: 1, scale: "objs", label: "objects/s", grid: { show: false } }
        ]
      }, data, self.el);
      self.el.setAttribute("data-points", String(d.t.length));
    }).then(function () {
      if (self.plot) { self.el.setAttribute("data-points", String(self.plot.data[0].length)); }
    });
  };
  SpeedChart.prototype.resize = function () {
    if (this.plot) { this.plot.setSize({ width: this.width(), height: 220 }); }
  };

  function applyLive(root, v) {
    Object.keys(v.text).forEach(function (k) {
      root.querySelectorAll('[data-live-text="' + k + '"]').forEach(function (el) {
        el.textContent = v.text[k];
        if (k === "reason") { el.hidden = !v.text[k]; }
        if (el.hasAttribute("data-live-class")) { el.className = "status s" + v.status; }
      });
    });
    root.querySelectorAll("[data-live-bar]").forEach(function (el) {
      var f = Math.max(0, Math.min(1, v[el.getAttribute("data-live-bar")] || 0));
      var pct = (f * 100).toFixed(1);
      el.setAttribute("aria-valuenow", pct);
      el.firstElementChild.style.width = pct + "%";
    });
    root.setAttribute("data-status", String(v.status));
  }

  function startTaskPage(root) {
    var id = root.getAttribute("data-task-id");
    var chartEl = document.getElementById("speed-chart");
    var chart = chartEl ? new SpeedChart(chartEl) : null;
    var lastChart = 0;
    var failedShown = parseInt((document.getElementById("failures") || root).getAttribute("data-failed") || "0", 10);
    if (chart) { chart.load().catch(function () {}); lastChart = Date.now(); }
    window.addEventListener("resize", function () { if (chart) { chart.resize(); } });

    function refreshFailures(count) {
      if (count === failedShown || !window.htmx) { return; }
      failedShown = count;  // no second request while this one is under way
      window.htmx.ajax("GET", "/console/tasks/" + id + "/failures", { target: "#failures", swap: "outerHTML" })
        .then(function () {
          var card = document.getElementById("failures");
          if (card) { failedShown = parseInt(card.getAttribute("data-failed") || "0", 10); }
        });
    }

    function tick() {
      getJSON("/console/tasks/" + id + "/live").then(function (v) {
        applyLive(root, v);
        refreshFailures(v.failed_num);
        var every = Math.max(CHART_EVERY_MS, CHART_COST_FACTOR * ((chart && chart.took) || 0));
        var chartDue = Date.now() - lastChart >= every;
        if (chart && (chartDue || !v.live)) { lastChart = Date.now(); chart.load().catch(function () {}); }
        if (v.live) { window.setTimeout(tick, LIVE_EVERY_MS); }
        else { root.setAttribute("data-live", "false"); }
      }).catch(function () { window.setTimeout(tick, LIVE_EVERY_MS * 3); });
    }
    if (root.getAttribute("data-live") === "true") { window.setTimeout(tick, LIVE_EVERY_MS); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var task = document.getElementById("task");
    if (task) { startTaskPage(task); }
  });
})();
