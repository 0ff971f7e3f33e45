(function(){
  "use strict";
  var d = JSON.parse(document.getElementById("data").textContent);
  var cv = document.getElementById("map"), ctx = cv.getContext("2d"), n = d.x.length;
  var pad = 12, W = cv.width, H = cv.height;
  var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;  // a loop: spreading 10^5 arguments overflows the stack
  for (var m = 0; m < n; m++) { x0 = Math.min(x0, d.x[m]); x1 = Math.max(x1, d.x[m]); y0 = Math.min(y0, d.y[m]); y1 = Math.max(y1, d.y[m]); }
  var lx = d.lx || [], ly = d.ly || [], nl = lx.length;  // labelled images placed on the map (a sample), drawn under
  for (var l = 0; l < nl; l++) { x0 = Math.min(x0, lx[l]); x1 = Math.max(x1, lx[l]); y0 = Math.min(y0, ly[l]); y1 = Math.max(y1, ly[l]); }
  var nx = d.nx || [], ny = d.ny || [], nn = nx.length;  // a second labelling (new data), drawn over everything
  for (var q = 0; q < nn; q++) { x0 = Math.min(x0, nx[q]); x1 = Math.max(x1, nx[q]); y0 = Math.min(y0, ny[q]); y1 = Math.max(y1, ny[q]); }
  var sc = Math.min((W - 2 * pad) / ((x1 - x0) || 1), (H - 2 * pad) / ((y1 - y0) || 1));
  var sx = new Float32Array(n), sy = new Float32Array(n);
  for (var i = 0; i < n; i++) { sx[i] = pad + (d.x[i] - x0) * sc; sy[i] = H - pad - (d.y[i] - y0) * sc; }
  function colorOf(c) { return c < 0 ? d.noise : d.colors[String(c)]; }
  function draw() {
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    ctx.fillStyle = d.labelled;
    for (var u = 0; u < nl; u++) ctx.fillRect(pad + (lx[u] - x0) * sc - 0.75, H - pad - (ly[u] - y0) * sc - 0.75, 1.5, 1.5);
    var order = [-1].concat(Object.keys(d.colors).map(Number));
    for (var o = 0; o < order.length; o++) {
      ctx.fillStyle = colorOf(order[o]);
      for (var j = 0; j < n; j++) if (d.c[j] === order[o]) ctx.fillRect(sx[j] - 1, sy[j] - 1, 2.5, 2.5);
    }
    ctx.fillStyle = d.second;
    for (var v = 0; v < nn; v++) ctx.fillRect(pad + (nx[v] - x0) * sc - 0.75, H - pad - (ny[v] - y0) * sc - 0.75, 1.5, 1.5);
  }
  var G = 24, cols = Math.ceil(W / G), rows = Math.ceil(H / G), grid = new Array(cols * rows);
  for (var g = 0; g < grid.length; g++) grid[g] = [];
  for (var k = 0; k < n; k++) grid[Math.min(rows - 1, Math.floor(sy[k] / G)) * cols + Math.min(cols - 1, Math.floor(sx[k] / G))].push(k);
  function nearest(px, py) {
    var best = -1, bd = 64, gx = Math.floor(px / G), gy = Math.floor(py / G);
    for (var a = gx - 1; a <= gx + 1; a++) for (var b = gy - 1; b <= gy + 1; b++) {
      if (a < 0 || b < 0 || a >= cols || b >= rows) continue;
      var cell = grid[b * cols + a];
      for (var q = 0; q < cell.length; q++) { var p = cell[q], dd = (sx[p] - px) * (sx[p] - px) + (sy[p] - py) * (sy[p] - py); if (dd < bd) { bd = dd; best = p; } }
    }
    return best;
  }
  var tip = document.getElementById("tip"), tipimg = document.getElementById("tipimg");
  function show(p) {
    if (p < 0) { tip.hidden = true; return; }
    var s = d.s[p];
    if (s >= 0) {
      var per = d.sheet * d.sheet, sheet = Math.floor(s / per), r = s % per;
      tipimg.style.backgroundImage = "url(sprites/sheet" + sheet + ".jpg)";
      tipimg.style.backgroundPosition = (-(r % d.sheet) * d.thumb) + "px " + (-Math.floor(r / d.sheet) * d.thumb) + "px";
    } else { tipimg.style.backgroundImage = "none"; }
    document.getElementById("tippath").textContent = d.p[p];
    document.getElementById("tipcluster").textContent = d.c[p] < 0 ? "noise" : d.names[String(d.c[p])];
    tip.hidden = false;
    tip.style.left = Math.min(sx[p] + 12, W - 200) + "px"; tip.style.top = Math.min(sy[p] + 12, H - 90) + "px";
  }
  function at(e) { var r = cv.getBoundingClientRect(); return nearest((e.clientX - r.left) * W / r.width, (e.clientY - r.top) * H / r.height); }
  cv.addEventListener("mousemove", function (e) { show(at(e)); });
  cv.addEventListener("mouseleave", function () { tip.hidden = true; });
  var prefix = "";  // the chosen view's cluster anchors: "" for the center, "view-<name>-" for the others
  cv.addEventListener("click", function (e) { var p = at(e); if (p >= 0 && d.c[p] >= 0) location.hash = prefix + "cluster-" + d.c[p]; });
  // Views (several clusterings of the same points): a button recolours the map and shows that view's legend and galleries.
  var base = { c: d.c, names: d.names, colors: d.colors }, views = {}, current = "center";
  (d.views || []).forEach(function (v) { views[v.name] = v.c ? v : { c: base.c, names: base.names, colors: base.colors, a: v.a }; });
  function setView(name) {
    var v = views[name];
    if (!v) return false;
    d.c = v.c; d.names = v.names; d.colors = v.colors; prefix = v.a || ""; current = name;
    Array.prototype.forEach.call(document.querySelectorAll("[data-view]"), function (el) { el.hidden = el.getAttribute("data-view") !== name; });
    Array.prototype.forEach.call(document.querySelectorAll(".viewbtn"), function (b) { b.setAttribute("aria-pressed", String(b.getAttribute("data-show") === name)); });
    tip.hidden = true;
    draw();
    return true;
  }
  Array.prototype.forEach.call(document.querySelectorAll(".viewbtn"), function (b) { b.addEventListener("click", function () { setView(b.getAttribute("data-show")); }); });
  draw();
  window.introspectMap = {
    n: n,
    screen: function (i) { var r = cv.getBoundingClientRect(); return [r.left + sx[i] * r.width / W, r.top + sy[i] * r.height / H]; },
    view: function (name) { return name === undefined ? current : setView(name); }
  };
})();
