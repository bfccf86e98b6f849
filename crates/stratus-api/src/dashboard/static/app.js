// The Stratus dashboard: one page, vanilla JavaScript, no build step.
//
// Every value shown is inserted as text through DOM APIs (see `h`), never
// as HTML. The page never sees a token: it calls the real APIs through the
// server's same-origin proxy /dashboard/api/..., which adds the session's
// token; every call carries the session's CSRF token.
"use strict";

(function () {
  var S = { session: null, loginCsrf: "", timer: null, route: "" };

  // ---- DOM helpers ------------------------------------------------------

  // h("tag.class#id", {attr: value, onclick: fn}, child, ...): children are
  // nodes, strings (text) or arrays of those.
  function h(spec, attrs) {
    var m = /^([a-z0-9]+)?((?:[.#][^.#]+)*)$/i.exec(spec) || [null, spec, ""];
    var el = document.createElement(m[1] || "div");
    (m[2].match(/[.#][^.#]+/g) || []).forEach(function (p) {
      if (p[0] === ".") el.classList.add(p.slice(1)); else el.id = p.slice(1);
    });
    var start = 1;
    if (attrs && typeof attrs === "object" && !(attrs instanceof Node) && !Array.isArray(attrs)) {
      start = 2;
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === undefined || v === null || v === false) return;
        if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
        else if (k === "value") el.value = v;
        else if (k === "checked" || k === "selected" || k === "disabled" || k === "multiple") el[k] = !!v;
        else el.setAttribute(k, v === true ? "" : String(v));
      });
    }
    for (var i = start; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  function add(el, c) {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) { c.forEach(function (x) { add(el, x); }); return; }
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  function main() { return document.getElementById("content"); }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "";
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function when(s) { return s ? String(s).replace("T", " ").replace(/\.\d+/, "").replace("Z", "") : ""; }
  function statusCell(s) {
    return h("span.status.status-" + String(s || "unknown").replace(/[^A-Za-z_-]/g, ""), { "data-status": s }, s || "");
  }

  // ---- calls ------------------------------------------------------------

  function errorText(status, body) {
    if (body && typeof body === "object") {
      var keys = Object.keys(body);
      for (var i = 0; i < keys.length; i++) {
        var v = body[keys[i]];
        if (v && typeof v === "object" && v.message) return v.message;
      }
      if (body.errors && body.errors[0]) return body.errors[0].detail || body.errors[0].title;
      if (body.message) return body.message;
    }
    if (typeof body === "string" && body.trim()) return body.trim().slice(0, 300);
    return "HTTP " + status;
  }
  function ApiErr(status, message) { this.status = status; this.message = message; }

  // A call to the real API through the proxy: path without the leading
  // /dashboard/api/, e.g. "compute/v2.1/servers/detail".
  function api(method, path, body, headers) {
    var hd = { "X-CSRF-Token": S.session ? S.session.csrf : "", "Accept": "application/json" };
    if (body !== undefined) hd["Content-Type"] = "application/json";
    Object.keys(headers || {}).forEach(function (k) { hd[k] = headers[k]; });
    return fetch("/dashboard/api/" + path, {
      method: method, headers: hd, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.text().then(function (t) {
        var v = null;
        try { v = t ? JSON.parse(t) : null; } catch (e) { v = t; }
        if (r.status === 401 && S.session) { S.session = null; start(); }
        if (!r.ok) throw new ApiErr(r.status, errorText(r.status, v));
        return v;
      });
    });
  }
  function post(path, body, csrf) {
    return fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {})
    }).then(function (r) {
      return r.text().then(function (t) {
        var v = null;
        try { v = t ? JSON.parse(t) : null; } catch (e) { v = t; }
        if (!r.ok) throw new ApiErr(r.status, errorText(r.status, v));
        return v;
      });
    });
  }
  function showError(where, e) {
    var msg = e && e.message ? e.message : String(e);
    var box = h("div.error", { role: "alert", "data-status": e && e.status }, msg);
    if (where) where.insertBefore(box, where.firstChild);
    return box;
  }
  function flash(where, text) {
    var n = h("div.notice", text);
    where.insertBefore(n, where.firstChild);
    setTimeout(function () { if (n.parentNode) n.parentNode.removeChild(n); }, 4000);
  }
  function pid() { return S.session && S.session.project ? S.session.project.id : ""; }

  // ---- start, login, layout ----------------------------------------------

  function start() {
    fetch("/dashboard/session", { credentials: "same-origin" }).then(function (r) {
      return r.json().then(function (v) {
        if (r.ok) { S.session = v; layout(); route(); }
        else { S.session = null; S.loginCsrf = v.login_csrf || ""; loginView(); }
      });
    }).catch(function (e) { clear(document.getElementById("app")); showError(document.getElementById("app"), e); });
  }

  function loginView(message) {
    stopTimer();
    var app = clear(document.getElementById("app"));
    var useAppCred = false;
    var err = h("div#login-error");
    var pw = h("div",
      h("label", h("span", "User name"), h("input#login-username", { type: "text", name: "username", autocomplete: "username", required: true })),
      h("label", h("span", "Password"), h("input#login-password", { type: "password", name: "password", autocomplete: "current-password" })),
      h("label", h("span", "Domain"), h("input#login-domain", { type: "text", name: "domain", value: "Default" })),
      h("label", h("span", "Project"), h("input#login-project", { type: "text", name: "project", placeholder: "(optional)" })));
    var ac = h("div", { hidden: true },
      h("label", h("span", "Credential id"), h("input#login-appcred-id", { type: "text", name: "application_credential_id" })),
      h("label", h("span", "Secret"), h("input#login-appcred-secret", { type: "password", name: "application_credential_secret" })));
    var toggle = h("a", { href: "#", id: "login-toggle" }, "Use an application credential");
    toggle.addEventListener("click", function (ev) {
      ev.preventDefault();
      useAppCred = !useAppCred;
      pw.hidden = useAppCred; ac.hidden = !useAppCred;
      document.getElementById("login-username").required = !useAppCred;
      toggle.textContent = useAppCred ? "Use a user name and password" : "Use an application credential";
    });
    var form = h("form.panel#login-form", { method: "post", action: "/dashboard/login" },
      err, pw, ac,
      h("p", h("button.primary#login-submit", { type: "submit" }, "Log in"), " ", toggle));
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      clear(err);
      var v = function (id) { return document.getElementById(id).value; };
      var body = useAppCred
        ? { application_credential_id: v("login-appcred-id"), application_credential_secret: v("login-appcred-secret") }
        : { username: v("login-username"), password: v("login-password"), domain: v("login-domain"), project: v("login-project") };
      post("/dashboard/login", body, S.loginCsrf).then(function (s) {
        S.session = s;
        if (!location.hash || location.hash === "#/login") location.hash = "#/overview";
        layout(); route();
      }).catch(function (e) {
        if (e.status === 403) { start(); return; }
        showError(err, e);
      });
    });
    app.appendChild(h("div.login", h("h1", "Stratus"), message ? h("div.notice", message) : null, form));
    document.getElementById("login-username").focus();
  }

  var TENANT = [
    ["overview", "Overview"], ["servers", "Servers"], ["images", "Images"], ["keypairs", "Key pairs"],
    ["networks", "Networks"], ["routers", "Routers"], ["floatingips", "Floating IPs"], ["secgroups", "Security groups"]
  ];
  var ADMIN = [
    ["admin/projects", "Projects"], ["admin/users", "Users"], ["admin/roles", "Roles"], ["admin/quotas", "Quotas"],
    ["admin/hypervisors", "Hypervisors"], ["admin/sites", "Sites"], ["admin/services", "Services"]
  ];

  function layout() {
    var s = S.session;
    var app = clear(document.getElementById("app"));
    var sel = h("select#project-switch", { title: "Project" });
    (s.projects || []).forEach(function (p) {
      sel.appendChild(h("option", { value: p.id, selected: s.project && p.id === s.project.id }, p.name));
    });
    if (!s.project) sel.appendChild(h("option", { value: "", selected: true }, "(no project)"));
    sel.addEventListener("change", function () {
      post("/dashboard/project", { project_id: sel.value }, s.csrf).then(function (n) {
        S.session = n; layout(); route();
      }).catch(function (e) { showError(main(), e); });
    });
    var logout = h("button#logout", { type: "button" }, "Log out");
    logout.addEventListener("click", function () {
      post("/dashboard/logout", {}, s.csrf).catch(function () {}).then(function () {
        S.session = null; location.hash = ""; start();
      });
    });
    var nav = h("nav.side", h("h4", "Project"),
      TENANT.map(function (p) { return h("a", { href: "#/" + p[0], "data-page": p[0] }, p[1]); }));
    if (s.admin) {
      nav.appendChild(h("h4#admin-nav", "Admin"));
      ADMIN.forEach(function (p) { nav.appendChild(h("a", { href: "#/" + p[0], "data-page": p[0] }, p[1])); });
    }
    app.appendChild(h("header.top", h("span.brand", "Stratus"), sel,
      h("span#whoami", s.user.name + (s.admin ? " (admin)" : "")), logout));
    app.appendChild(h("div.layout", nav, h("main#content")));
  }

  function stopTimer() { if (S.timer) { clearInterval(S.timer); S.timer = null; } }
  function poll(fn, ms) { stopTimer(); S.timer = setInterval(fn, ms || 3000); }

  var PAGES = {};
  // What other files add to pages defined here (see `window.Stratus`).
  var HOOKS = { serverDetail: [] };
  function route() {
    if (!S.session) return;
    stopTimer();
    var hash = location.hash.replace(/^#\/?/, "") || "overview";
    var parts = hash.split("/");
    var name = parts[0] === "admin" ? parts.slice(0, 2).join("/") : parts[0];
    var arg = parts.slice(parts[0] === "admin" ? 2 : 1).join("/");
    S.route = hash;
    document.querySelectorAll("nav.side a").forEach(function (a) {
      a.classList.toggle("active", a.getAttribute("data-page") === name);
    });
    var c = clear(main());
    var page = PAGES[name];
    if (!page) { c.appendChild(h("h1", "Not found")); return; }
    if (name.indexOf("admin/") === 0 && !S.session.admin) {
      // The API refuses a member; its answer is shown, never admin data.
      c.appendChild(h("h1", "Admin"));
      page.probe().then(function () {
        showError(c, { status: 403, message: "This page needs the admin role." });
      }, function (e) { showError(c, e); });
      return;
    }
    page.render(c, decodeURIComponent(arg));
  }
  window.addEventListener("hashchange", route);

  // A table: columns [[title, fn(row) -> node/text]], rows.
  function table(cols, rows, empty, attrs) {
    var t = h("table.list", attrs || {},
      h("thead", h("tr", cols.map(function (c) { return h("th", c[0]); }))));
    var body = h("tbody");
    if (!rows.length) body.appendChild(h("tr", h("td.empty", { colspan: cols.length }, empty || "Nothing here yet.")));
    rows.forEach(function (r) {
      body.appendChild(h("tr", { "data-id": r.id }, cols.map(function (c) { return h("td", c[1](r)); })));
    });
    t.appendChild(body);
    t.setAttribute("data-rendered", String(Date.now()));
    return t;
  }
  // A delete button that asks once more before acting.
  function delButton(label, act) {
    var b = h("button.danger", { type: "button", "data-action": "delete" }, label || "Delete");
    var armed = false;
    b.addEventListener("click", function () {
      if (!armed) { armed = true; b.classList.add("armed"); b.textContent = "Confirm"; return; }
      b.disabled = true; act();
    });
    return b;
  }
  // A simple list page: title, loader -> rows, columns, optional form.
  function listPage(c, opt) {
    c.appendChild(h("h1", opt.title));
    var bar = h("div.toolbar");
    var holder = h("div", h("p.loading", "Loading…"));
    var formBox = h("div");
    c.appendChild(bar); c.appendChild(formBox); c.appendChild(holder);
    function load() {
      return opt.load().then(function (rows) {
        clear(holder).appendChild(table(opt.cols(load), rows, opt.empty, { id: opt.id }));
      }, function (e) { clear(holder); showError(holder, e); });
    }
    if (opt.form) {
      var b = h("button.primary", { type: "button", "data-action": "create" }, opt.formTitle || "Create");
      b.addEventListener("click", function () {
        if (formBox.firstChild) { clear(formBox); return; }
        formBox.appendChild(opt.form(function () { clear(formBox); load(); }, formBox));
      });
      bar.appendChild(b);
    }
    load();
    return load;
  }
  // A form panel: fields [[label, input]], submit -> promise.
  function formPanel(id, fields, submitLabel, onSubmit) {
    var f = h("form.panel", { id: id },
      fields.map(function (x) { return h("label", h("span", x[0]), x[1]); }),
      h("p", h("button.primary", { type: "submit" }, submitLabel || "Create")));
    f.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var old = f.querySelector(".error"); if (old) old.parentNode.removeChild(old);
      var btn = f.querySelector("button[type=submit]"); btn.disabled = true;
      Promise.resolve().then(onSubmit).then(function () { btn.disabled = false; },
        function (e) { btn.disabled = false; showError(f, e); });
    });
    return f;
  }
  function options(sel, items, label, blank) {
    clear(sel);
    if (blank !== undefined) sel.appendChild(h("option", { value: "" }, blank));
    items.forEach(function (it) { sel.appendChild(h("option", { value: it.id }, label(it))); });
    return sel;
  }

  // ---- overview -----------------------------------------------------------

  // The quota cards: each service's quota set with usage, the names shown.
  var QUOTAS = [
    { path: function (p) { return "compute/v2.1/os-quota-sets/" + p + "/detail"; },
      names: [["instances", "Servers"], ["cores", "VCPUs"], ["ram", "RAM (MiB)"], ["key_pairs", "Key pairs"],
        ["server_groups", "Server groups"], ["metadata_items", "Metadata items"]] },
    { path: function (p) { return "volume/v3/os-quota-sets/" + p + "?usage=true"; },
      names: [["volumes", "Volumes"], ["gigabytes", "Volume storage (GiB)"], ["snapshots", "Volume snapshots"]] }
  ];

  PAGES.overview = { render: function (c) {
    c.appendChild(h("h1", "Overview" + (S.session.project ? ": " + S.session.project.name : "")));
    var cards = h("div.cards#quota-cards", h("p.loading", "Loading…"));
    c.appendChild(cards);
    if (!pid()) { clear(cards).appendChild(h("p.muted", "No project selected.")); return; }
    // Each service's cards in their own box, so the order holds whichever answers first.
    var boxes = QUOTAS.map(function () { return h("div.cards"); });
    var loaded = 0;
    QUOTAS.forEach(function (src, i) {
      api("GET", src.path(encodeURIComponent(pid()))).then(function (v) {
        var q = v.quota_set || {};
        src.names.forEach(function (n) {
          var d = q[n[0]]; if (!d) return;
          var used = d.in_use || 0, lim = d.limit;
          var pct = lim > 0 ? Math.min(100, Math.round(100 * used / lim)) : 0;
          boxes[i].appendChild(h("div.card", { "data-quota": n[0] }, h("div.label", n[1]),
            h("div.figure", used + " / " + (lim < 0 ? "∞" : lim)),
            h("div" + (pct >= 100 ? ".bar.full" : ".bar"), h("div", { "data-pct": pct }))));
        });
        // The bar widths go through the CSSOM (no inline style attribute).
        boxes[i].querySelectorAll("[data-pct]").forEach(function (d) { d.style.width = d.getAttribute("data-pct") + "%"; });
      }, function (e) { showError(boxes[i], e); }).then(function () {
        if (++loaded === QUOTAS.length) { clear(cards); boxes.forEach(function (b) { add(cards, Array.prototype.slice.call(b.childNodes)); }); }
      });
    });
  } };

  // ---- servers --------------------------------------------------------------

  var PAGE_SIZE = 50;
  PAGES.servers = { render: function (c, arg) {
    if (arg) return serverDetail(c, arg);
    c.appendChild(h("h1", "Servers"));
    var filter = h("input#server-filter", { type: "text", placeholder: "Filter by name", value: S.serverFilter || "" });
    var create = h("button.primary#server-create", { type: "button", "data-action": "create" }, "Create server");
    var formBox = h("div");
    var holder = h("div#servers-holder", h("p.loading", "Loading…"));
    var pager = h("div.pager");
    c.appendChild(h("div.toolbar", filter, create));
    c.appendChild(formBox); c.appendChild(holder); c.appendChild(pager);
    var markers = [], marker = "", flavors = {}, images = {};
    function load() {
      var q = "limit=" + PAGE_SIZE + (marker ? "&marker=" + encodeURIComponent(marker) : "") +
        (filter.value ? "&name=" + encodeURIComponent(filter.value) : "");
      return api("GET", "compute/v2.1/servers/detail?" + q).then(function (v) {
        var rows = v.servers || [];
        var t = table([
          ["Name", function (s) { return h("a", { href: "#/servers/" + encodeURIComponent(s.id) }, s.name || s.id); }],
          ["Status", function (s) {
            var task = s["OS-EXT-STS:task_state"];
            var pct = s.progress && s.status !== "ACTIVE" && s.status !== "SHUTOFF" ? " " + s.progress + "%" : "";
            return [statusCell(s.status), task || pct ? h("span.muted", " (" + (task || "") + pct + ")") : null];
          }],
          ["Addresses", function (s) { return addresses(s); }],
          ["Flavor", function (s) { return s.flavor ? (flavors[s.flavor.id] || s.flavor.original_name || s.flavor.id || "") : ""; }],
          ["Image", function (s) { return s.image && s.image.id ? (images[s.image.id] || s.image.id.slice(0, 8)) : ""; }],
          ["Created", function (s) { return when(s.created); }],
          ["Actions", function (s) { return serverActions(s, load); }]
        ], rows, filter.value ? "No server matches." : "No servers yet.", { id: "servers-table" });
        clear(holder).appendChild(t);
        clear(pager);
        var prev = h("button#servers-prev", { type: "button", disabled: !markers.length }, "‹ Previous");
        prev.addEventListener("click", function () { marker = markers.pop() || ""; load(); });
        var next = h("button#servers-next", { type: "button", disabled: rows.length < PAGE_SIZE }, "Next ›");
        next.addEventListener("click", function () { markers.push(marker); marker = rows[rows.length - 1].id; load(); });
        pager.appendChild(prev); pager.appendChild(next);
        pager.appendChild(h("span.muted", rows.length + " shown"));
      }, function (e) { clear(holder); showError(holder, e); });
    }
    var typing = null;
    filter.addEventListener("input", function () {
      S.serverFilter = filter.value;
      clearTimeout(typing);
      typing = setTimeout(function () { markers = []; marker = ""; load(); }, 300);
    });
    create.addEventListener("click", function () {
      if (formBox.firstChild) { clear(formBox); return; }
      formBox.appendChild(serverForm(function () { clear(formBox); load(); }));
    });
    load();
    // Names for flavor and image ids, then again with names.
    Promise.all([
      api("GET", "compute/v2.1/flavors/detail").then(function (v) { (v.flavors || []).forEach(function (f) { flavors[f.id] = f.name; }); }),
      api("GET", "image/v2/images?limit=200").then(function (v) { (v.images || []).forEach(function (i) { images[i.id] = i.name || i.id; }); })
    ]).then(load, function () {});
    // Live status without reloading: poll the page shown.
    poll(function () { if (!document.querySelector("#servers-table button.armed")) load(); }, 3000);
  } };

  function addresses(s) {
    var out = [];
    Object.keys(s.addresses || {}).forEach(function (net) {
      var a = (s.addresses[net] || []).map(function (x) { return x.addr; }).join(", ");
      out.push(h("div", h("span.muted", net + ": "), a));
    });
    return out;
  }

  function serverAction(id, body) {
    return api("POST", "compute/v2.1/servers/" + encodeURIComponent(id) + "/action", body);
  }
  function serverActions(s, reload) {
    var where = function () { return main(); };
    var act = function (label, name, body, show) {
      if (!show) return null;
      var b = h("button", { type: "button", "data-action": name }, label);
      b.addEventListener("click", function () {
        b.disabled = true;
        serverAction(s.id, body).then(reload, function (e) { b.disabled = false; showError(where(), e); });
      });
      return b;
    };
    var st = s.status;
    return h("span.actions",
      act("Start", "start", { "os-start": null }, st === "SHUTOFF"),
      act("Stop", "stop", { "os-stop": null }, st === "ACTIVE"),
      act("Reboot", "reboot", { reboot: { type: "SOFT" } }, st === "ACTIVE"),
      delButton("Delete", function () {
        api("DELETE", "compute/v2.1/servers/" + encodeURIComponent(s.id)).then(reload, function (e) { showError(where(), e); });
      }));
  }

  function serverForm(done) {
    var name = h("input#new-server-name", { type: "text", required: true });
    var image = h("select#new-server-image", { required: true });
    var flavor = h("select#new-server-flavor", { required: true });
    var key = h("select#new-server-keypair");
    var net = h("select#new-server-network");
    var sgs = h("select#new-server-secgroups", { multiple: true, size: 3 });
    var count = h("input#new-server-count", { type: "number", min: 1, value: 1 });
    api("GET", "image/v2/images?status=active&limit=200").then(function (v) {
      options(image, v.images || [], function (i) { return i.name || i.id; });
    }, function (e) { showError(f, e); });
    api("GET", "compute/v2.1/flavors/detail").then(function (v) {
      var fl = (v.flavors || []).slice().sort(function (a, b) { return a.ram - b.ram; });
      options(flavor, fl, function (x) { return x.name + " (" + x.vcpus + " VCPU, " + x.ram + " MiB, " + x.disk + " GB)"; });
    }, function (e) { showError(f, e); });
    api("GET", "compute/v2.1/os-keypairs").then(function (v) {
      options(key, (v.keypairs || []).map(function (k) { return { id: k.keypair.name }; }), function (k) { return k.id; }, "(none)");
    }, function () { options(key, [], null, "(none)"); });
    api("GET", "network/v2.0/networks").then(function (v) {
      options(net, v.networks || [], function (n) { return n.name || n.id; }, "(no network)");
    }, function () { options(net, [], null, "(no network)"); });
    api("GET", "network/v2.0/security-groups").then(function (v) {
      options(sgs, (v.security_groups || []).map(function (g) { return { id: g.name, n: g.name }; }), function (g) { return g.n; });
    }, function () {});
    var f = formPanel("server-form", [["Name", name], ["Image", image], ["Flavor", flavor], ["Key pair", key],
      ["Network", net], ["Security groups", sgs], ["Count", count]], "Launch", function () {
      var s = { name: name.value, imageRef: image.value, flavorRef: flavor.value };
      s.networks = net.value ? [{ uuid: net.value }] : "none";
      if (key.value) s.key_name = key.value;
      var groups = Array.prototype.filter.call(sgs.options, function (o) { return o.selected; })
        .map(function (o) { return { name: o.value }; });
      if (groups.length) s.security_groups = groups;
      var n = parseInt(count.value, 10) || 1;
      if (n > 1) { s.min_count = n; s.max_count = n; }
      return api("POST", "compute/v2.1/servers", { server: s }, { "OpenStack-API-Version": "compute 2.38" }).then(done);
    });
    return f;
  }

  // Nova's power_state numbers.
  var POWER = { 0: "NOSTATE", 1: "Running", 3: "Paused", 4: "Shut down", 6: "Crashed", 7: "Suspended" };

  function serverDetail(c, id) {
    var title = h("h1", "Server");
    var box = h("div", h("p.loading", "Loading…"));
    var actions = h("div.toolbar");
    var consoleBox = h("pre.console#console-log", "");
    var refresh = h("button#console-refresh", { type: "button" }, "Refresh console");
    c.appendChild(h("p", h("a", { href: "#/servers" }, "‹ Servers")));
    c.appendChild(title); c.appendChild(actions); c.appendChild(box);
    // Sections other files add (volumes); each refreshes with the server.
    var extras = HOOKS.serverDetail.map(function (make) {
      var sec = h("section");
      c.appendChild(sec);
      return make(sec, id);
    });
    c.appendChild(h("h2", "Console log"));
    c.appendChild(h("div.toolbar", refresh));
    c.appendChild(consoleBox);
    function load() {
      return api("GET", "compute/v2.1/servers/" + encodeURIComponent(id)).then(function (v) {
        var s = v.server;
        title.textContent = "Server " + (s.name || s.id);
        clear(actions).appendChild(serverActions(s, load));
        var props = [["ID", s.id], ["Status", statusCell(s.status)], ["Task", s["OS-EXT-STS:task_state"] || ""],
          ["Power state", POWER[s["OS-EXT-STS:power_state"]] || ""],
          ["Addresses", addresses(s)], ["Flavor", s.flavor ? s.flavor.id : ""], ["Image", s.image ? s.image.id : ""],
          ["Key pair", s.key_name || ""], ["Host", s["OS-EXT-SRV-ATTR:host"] || ""], ["Created", when(s.created)],
          ["Fault", s.fault ? s.fault.message : ""]];
        var dl = h("dl.props#server-props");
        props.forEach(function (p) { dl.appendChild(h("dt", p[0])); dl.appendChild(h("dd", p[1])); });
        clear(box).appendChild(dl);
        extras.forEach(function (refresh) { refresh(s); });
      }, function (e) {
        clear(box); clear(actions); showError(box, e);
        if (e.status === 404) stopTimer();
      });
    }
    function consoleLog() {
      return serverAction(id, { "os-getConsoleOutput": { length: 200 } }).then(function (v) {
        consoleBox.textContent = (v && v.output) || "(empty)";
        consoleBox.setAttribute("data-loaded", "1");
      }, function (e) { consoleBox.textContent = e.message; consoleBox.setAttribute("data-loaded", "error"); });
    }
    refresh.addEventListener("click", consoleLog);
    load(); consoleLog();
    poll(load, 3000);
  }

  // ---- images ----------------------------------------------------------------

  PAGES.images = { render: function (c) {
    var load = listPage(c, {
      title: "Images", id: "images-table", formTitle: "Upload image",
      load: function () { return api("GET", "image/v2/images?limit=200").then(function (v) { return v.images || []; }); },
      cols: function (reload) {
        return [["Name", function (i) { return i.name || ""; }], ["Status", function (i) { return statusCell(i.status); }],
          ["Size", function (i) { return fmtBytes(i.size); }],
          ["Format", function (i) { return (i.disk_format || "") + " / " + (i.container_format || ""); }],
          ["Visibility", function (i) { return i.visibility; }], ["Created", function (i) { return when(i.created_at); }],
          ["", function (i) { return i.owner === pid() || S.session.admin ? delButton("Delete", function () {
            api("DELETE", "image/v2/images/" + encodeURIComponent(i.id)).then(reload, function (e) { showError(c, e); });
          }) : null; }]];
      },
      form: function (done) {
        var name = h("input#image-name", { type: "text", required: true });
        var disk = options(h("select#image-disk-format"), ["raw", "qcow2", "iso", "vmdk", "vhd", "vdi", "ami"].map(function (x) { return { id: x }; }), function (x) { return x.id; });
        var cont = options(h("select#image-container-format"), ["bare", "docker", "ovf", "ova", "ami"].map(function (x) { return { id: x }; }), function (x) { return x.id; });
        var vis = options(h("select#image-visibility"), ["private", "shared", "community"].concat(S.session.admin ? ["public"] : []).map(function (x) { return { id: x }; }), function (x) { return x.id; });
        var file = h("input#image-file", { type: "file", required: true });
        var bar = h("progress#image-progress", { max: 100, value: 0, hidden: true });
        var label = h("span#image-progress-text.muted");
        var f = formPanel("image-form", [["Name", name], ["Disk format", disk], ["Container format", cont],
          ["Visibility", vis], ["File", file], ["Progress", [bar, " ", label]]], "Upload", function () {
          var fileObj = file.files[0];
          if (!fileObj) throw new ApiErr(400, "Choose a file to upload.");
          return api("POST", "image/v2/images", { name: name.value, disk_format: disk.value, container_format: cont.value, visibility: vis.value })
            .then(function (img) { return upload(img.id, fileObj, bar, label); }).then(function () { done(); load(); });
        });
        return f;
      }
    });
    poll(function () {
      if (!document.querySelector("#images-table button.armed") && document.querySelector("#images-table .status-queued, #images-table .status-saving, #images-table .status-importing")) load();
    }, 3000);
  } };

  // PUT the file with XHR, whose upload events drive the progress bar.
  function upload(id, file, bar, label) {
    return new Promise(function (resolve, reject) {
      var x = new XMLHttpRequest();
      x.open("PUT", "/dashboard/api/image/v2/images/" + encodeURIComponent(id) + "/file");
      x.setRequestHeader("Content-Type", "application/octet-stream");
      x.setRequestHeader("X-CSRF-Token", S.session.csrf);
      bar.hidden = false;
      x.upload.addEventListener("progress", function (ev) {
        if (ev.lengthComputable) {
          bar.value = Math.round(100 * ev.loaded / ev.total);
          label.textContent = fmtBytes(ev.loaded) + " of " + fmtBytes(ev.total);
        }
      });
      x.addEventListener("load", function () {
        if (x.status >= 200 && x.status < 300) { bar.value = 100; label.textContent = "Uploaded"; resolve(); }
        else {
          var v = x.responseText; try { v = JSON.parse(v); } catch (e) { /* text */ }
          reject(new ApiErr(x.status, errorText(x.status, v)));
        }
      });
      x.addEventListener("error", function () { reject(new ApiErr(0, "The upload failed.")); });
      x.send(file);
    });
  }

  // ---- key pairs -------------------------------------------------------------

  PAGES.keypairs = { render: function (c) {
    listPage(c, {
      title: "Key pairs", id: "keypairs-table",
      load: function () { return api("GET", "compute/v2.1/os-keypairs").then(function (v) { return (v.keypairs || []).map(function (k) { k.keypair.id = k.keypair.name; return k.keypair; }); }); },
      cols: function (reload) {
        return [["Name", function (k) { return k.name; }], ["Type", function (k) { return k.type || "ssh"; }],
          ["Fingerprint", function (k) { return k.fingerprint; }],
          ["", function (k) { return delButton("Delete", function () {
            api("DELETE", "compute/v2.1/os-keypairs/" + encodeURIComponent(k.name)).then(reload, function (e) { showError(c, e); });
          }); }]];
      },
      form: function (done, box) {
        var name = h("input#keypair-name", { type: "text", required: true });
        var pub = h("textarea#keypair-public", { rows: 3, placeholder: "(empty: generate a new key pair)" });
        return formPanel("keypair-form", [["Name", name], ["Public key", pub]], "Create", function () {
          var k = { name: name.value };
          if (pub.value.trim()) k.public_key = pub.value.trim();
          return api("POST", "compute/v2.1/os-keypairs", { keypair: k }).then(function (v) {
            done();
            if (v.keypair.private_key) {
              box.appendChild(h("div.panel", h("p", "The private key of " + v.keypair.name + " (shown only once):"),
                h("pre.secret", v.keypair.private_key)));
            }
          });
        });
      }
    });
  } };

  // ---- network ---------------------------------------------------------------

  PAGES.networks = { render: function (c) {
    var subnets = {};
    listPage(c, {
      title: "Networks", id: "networks-table",
      load: function () {
        return api("GET", "network/v2.0/subnets").then(function (v) {
          subnets = {}; (v.subnets || []).forEach(function (s) { subnets[s.id] = s; });
        }, function () {}).then(function () { return api("GET", "network/v2.0/networks"); }).then(function (v) { return v.networks || []; });
      },
      cols: function (reload) {
        return [["Name", function (n) { return n.name || n.id; }],
          ["Subnets", function (n) { return (n.subnets || []).map(function (s) { var x = subnets[s]; return h("div", x ? (x.name ? x.name + " " : "") + x.cidr : s); }); }],
          ["Shared", function (n) { return n.shared ? "yes" : "no"; }], ["External", function (n) { return n["router:external"] ? "yes" : "no"; }],
          ["Status", function (n) { return statusCell(n.status); }],
          ["", function (n) { return n.project_id === pid() || S.session.admin ? delButton("Delete", function () {
            api("DELETE", "network/v2.0/networks/" + encodeURIComponent(n.id)).then(reload, function (e) { showError(c, e); });
          }) : null; }]];
      },
      form: function (done) {
        var name = h("input#network-name", { type: "text", required: true });
        var cidr = h("input#network-cidr", { type: "text", placeholder: "e.g. 10.0.0.0/24 (optional)" });
        return formPanel("network-form", [["Name", name], ["Subnet CIDR", cidr]], "Create", function () {
          return api("POST", "network/v2.0/networks", { network: { name: name.value } }).then(function (v) {
            if (!cidr.value.trim()) return;
            return api("POST", "network/v2.0/subnets", { subnet: { network_id: v.network.id, name: name.value + "-subnet", cidr: cidr.value.trim(), ip_version: cidr.value.indexOf(":") >= 0 ? 6 : 4 } });
          }).then(done);
        });
      }
    });
  } };

  PAGES.routers = { render: function (c) {
    listPage(c, {
      title: "Routers", id: "routers-table",
      load: function () { return api("GET", "network/v2.0/routers").then(function (v) { return v.routers || []; }); },
      cols: function (reload) {
        return [["Name", function (r) { return r.name || r.id; }], ["Status", function (r) { return statusCell(r.status); }],
          ["External gateway", function (r) { return r.external_gateway_info ? r.external_gateway_info.network_id : ""; }],
          ["", function (r) { return delButton("Delete", function () {
            api("DELETE", "network/v2.0/routers/" + encodeURIComponent(r.id)).then(reload, function (e) { showError(c, e); });
          }); }]];
      },
      form: function (done) {
        var name = h("input#router-name", { type: "text", required: true });
        var ext = h("select#router-external");
        api("GET", "network/v2.0/networks?router:external=true").then(function (v) {
          options(ext, v.networks || [], function (n) { return n.name || n.id; }, "(none)");
        }, function () { options(ext, [], null, "(none)"); });
        return formPanel("router-form", [["Name", name], ["External network", ext]], "Create", function () {
          var r = { name: name.value };
          if (ext.value) r.external_gateway_info = { network_id: ext.value };
          return api("POST", "network/v2.0/routers", { router: r }).then(done);
        });
      }
    });
  } };

  PAGES.floatingips = { render: function (c) {
    listPage(c, {
      title: "Floating IPs", id: "floatingips-table", formTitle: "Allocate",
      load: function () { return api("GET", "network/v2.0/floatingips").then(function (v) { return v.floatingips || []; }); },
      cols: function (reload) {
        return [["Address", function (f) { return f.floating_ip_address; }], ["Fixed address", function (f) { return f.fixed_ip_address || ""; }],
          ["Port", function (f) { return f.port_id || ""; }], ["Status", function (f) { return statusCell(f.status); }],
          ["", function (f) { return delButton("Release", function () {
            api("DELETE", "network/v2.0/floatingips/" + encodeURIComponent(f.id)).then(reload, function (e) { showError(c, e); });
          }); }]];
      },
      form: function (done) {
        var ext = h("select#floatingip-network", { required: true });
        api("GET", "network/v2.0/networks?router:external=true").then(function (v) {
          options(ext, v.networks || [], function (n) { return n.name || n.id; });
        }, function () {});
        return formPanel("floatingip-form", [["Pool (external network)", ext]], "Allocate", function () {
          return api("POST", "network/v2.0/floatingips", { floatingip: { floating_network_id: ext.value } }).then(done);
        });
      }
    });
  } };

  PAGES.secgroups = { render: function (c) {
    listPage(c, {
      title: "Security groups", id: "secgroups-table",
      load: function () { return api("GET", "network/v2.0/security-groups").then(function (v) { return v.security_groups || []; }); },
      cols: function (reload) {
        return [["Name", function (g) { return g.name; }], ["Description", function (g) { return g.description || ""; }],
          ["Rules", function (g) {
            return (g.security_group_rules || []).map(function (r) {
              return h("div", r.direction + " " + (r.ethertype || "") + " " + (r.protocol || "any") +
                (r.port_range_min ? " " + r.port_range_min + (r.port_range_max !== r.port_range_min ? "-" + r.port_range_max : "") : "") +
                (r.remote_ip_prefix ? " from " + r.remote_ip_prefix : r.remote_group_id ? " from group" : ""));
            });
          }],
          ["", function (g) { return g.name === "default" ? null : delButton("Delete", function () {
            api("DELETE", "network/v2.0/security-groups/" + encodeURIComponent(g.id)).then(reload, function (e) { showError(c, e); });
          }); }]];
      },
      form: function (done) {
        var name = h("input#secgroup-name", { type: "text", required: true });
        var desc = h("input#secgroup-description", { type: "text" });
        return formPanel("secgroup-form", [["Name", name], ["Description", desc]], "Create", function () {
          return api("POST", "network/v2.0/security-groups", { security_group: { name: name.value, description: desc.value } }).then(done);
        });
      }
    });
  } };

  // ---- admin -----------------------------------------------------------------

  function adminPage(probePath, render) {
    return { probe: function () { return api("GET", probePath); }, render: render };
  }

  PAGES["admin/projects"] = adminPage("identity/v3/projects", function (c) {
    listPage(c, {
      title: "Projects", id: "projects-table",
      load: function () { return api("GET", "identity/v3/projects").then(function (v) { return v.projects || []; }); },
      cols: function (reload) {
        return [["Name", function (p) { return p.name; }], ["ID", function (p) { return p.id; }],
          ["Domain", function (p) { return p.domain_id; }], ["Enabled", function (p) { return statusCell(p.enabled ? "enabled" : "disabled"); }],
          ["Description", function (p) { return p.description || ""; }],
          ["", function (p) { return p.id === pid() ? null : delButton("Delete", function () {
            api("DELETE", "identity/v3/projects/" + encodeURIComponent(p.id)).then(reload, function (e) { showError(c, e); });
          }); }]];
      },
      form: function (done) {
        var name = h("input#project-name", { type: "text", required: true });
        var desc = h("input#project-description", { type: "text" });
        return formPanel("project-form", [["Name", name], ["Description", desc]], "Create", function () {
          return api("POST", "identity/v3/projects", { project: { name: name.value, description: desc.value, domain_id: "default" } }).then(done);
        });
      }
    });
  });

  PAGES["admin/users"] = adminPage("identity/v3/users", function (c) {
    listPage(c, {
      title: "Users", id: "users-table",
      load: function () { return api("GET", "identity/v3/users").then(function (v) { return v.users || []; }); },
      cols: function (reload) {
        return [["Name", function (u) { return u.name; }], ["ID", function (u) { return u.id; }], ["Domain", function (u) { return u.domain_id; }],
          ["Enabled", function (u) { return statusCell(u.enabled ? "enabled" : "disabled"); }],
          ["", function (u) { return u.id === S.session.user.id ? null : delButton("Delete", function () {
            api("DELETE", "identity/v3/users/" + encodeURIComponent(u.id)).then(reload, function (e) { showError(c, e); });
          }); }]];
      },
      form: function (done) {
        var name = h("input#user-name", { type: "text", required: true });
        var pw = h("input#user-password", { type: "password", required: true, autocomplete: "new-password" });
        var proj = h("select#user-project");
        var role = h("select#user-role");
        api("GET", "identity/v3/projects").then(function (v) { options(proj, v.projects || [], function (p) { return p.name; }, "(none)"); });
        api("GET", "identity/v3/roles").then(function (v) {
          options(role, v.roles || [], function (r) { return r.name; });
          Array.prototype.forEach.call(role.options, function (o) { if (o.textContent === "member") o.selected = true; });
        });
        return formPanel("user-form", [["Name", name], ["Password", pw], ["Project", proj], ["Role there", role]], "Create", function () {
          var u = { name: name.value, password: pw.value, domain_id: "default" };
          if (proj.value) u.default_project_id = proj.value;
          return api("POST", "identity/v3/users", { user: u }).then(function (v) {
            if (!proj.value || !role.value) return;
            return api("PUT", "identity/v3/projects/" + encodeURIComponent(proj.value) + "/users/" + encodeURIComponent(v.user.id) + "/roles/" + encodeURIComponent(role.value));
          }).then(done);
        });
      }
    });
  });

  PAGES["admin/roles"] = adminPage("identity/v3/roles", function (c) {
    listPage(c, {
      title: "Roles", id: "roles-table",
      load: function () { return api("GET", "identity/v3/roles").then(function (v) { return (v.roles || []).sort(function (a, b) { return a.name < b.name ? -1 : 1; }); }); },
      cols: function () { return [["Name", function (r) { return r.name; }], ["ID", function (r) { return r.id; }], ["Domain", function (r) { return r.domain_id || ""; }]]; }
    });
    c.appendChild(h("h2", "Role assignments"));
    var box = h("div", h("p.loading", "Loading…"));
    c.appendChild(box);
    api("GET", "identity/v3/role_assignments?include_names=true").then(function (v) {
      var rows = (v.role_assignments || []).map(function (a, i) { a.id = "ra" + i; return a; });
      var nm = function (x) { return x ? (x.name || x.id) : ""; };
      clear(box).appendChild(table([
        ["Role", function (a) { return nm(a.role); }],
        ["User / group", function (a) { return a.user ? nm(a.user) : a.group ? "group " + nm(a.group) : ""; }],
        ["Scope", function (a) { var s = a.scope || {}; return s.project ? "project " + nm(s.project) : s.domain ? "domain " + nm(s.domain) : s.system ? "system" : ""; }]
      ], rows, "No assignments.", { id: "assignments-table" }));
    }, function (e) { clear(box); showError(box, e); });
  });

  PAGES["admin/quotas"] = adminPage("identity/v3/projects", function (c) {
    c.appendChild(h("h1", "Quotas"));
    var sel = h("select#quota-project");
    var box = h("div");
    c.appendChild(h("div.toolbar", h("span", "Project "), sel));
    c.appendChild(box);
    function show() {
      clear(box);
      if (!sel.value) return;
      api("GET", "compute/v2.1/os-quota-sets/" + encodeURIComponent(sel.value) + "/detail").then(function (v) {
        var q = v.quota_set || {};
        var inputs = {};
        var fields = Object.keys(q).filter(function (k) { return q[k] && typeof q[k] === "object"; }).sort().map(function (k) {
          inputs[k] = h("input", { type: "number", min: -1, value: q[k].limit, name: k });
          return [k + " (in use " + (q[k].in_use || 0) + ")", inputs[k]];
        });
        box.appendChild(formPanel("quota-form", fields, "Save", function () {
          var body = {};
          Object.keys(inputs).forEach(function (k) { if (String(q[k].limit) !== inputs[k].value) body[k] = parseInt(inputs[k].value, 10); });
          return api("PUT", "compute/v2.1/os-quota-sets/" + encodeURIComponent(sel.value), { quota_set: body }).then(function () { flash(box, "Saved."); });
        }));
      }, function (e) { showError(box, e); });
    }
    sel.addEventListener("change", show);
    api("GET", "identity/v3/projects").then(function (v) {
      options(sel, v.projects || [], function (p) { return p.name; });
      sel.value = pid() || sel.value;
      show();
    }, function (e) { showError(c, e); });
  });

  PAGES["admin/hypervisors"] = adminPage("compute/v2.1/os-hypervisors", function (c) {
    listPage(c, {
      title: "Hypervisors", id: "hypervisors-table",
      load: function () { return api("GET", "compute/v2.1/os-hypervisors/detail").then(function (v) { return v.hypervisors || []; }); },
      cols: function () {
        return [["Host", function (x) { return x.hypervisor_hostname; }], ["Type", function (x) { return x.hypervisor_type || ""; }],
          ["State", function (x) { return statusCell(x.state); }], ["Status", function (x) { return statusCell(x.status); }],
          ["VCPUs (used / total)", function (x) { return (x.vcpus_used || 0) + " / " + (x.vcpus || 0); }],
          ["RAM (used / total)", function (x) { return fmtBytes((x.memory_mb_used || 0) * 1048576) + " / " + fmtBytes((x.memory_mb || 0) * 1048576); }],
          ["Disk (used / total)", function (x) { return (x.local_gb_used || 0) + " / " + (x.local_gb || 0) + " GB"; }],
          ["Servers", function (x) { return x.running_vms === undefined ? "" : x.running_vms; }],
          ["Address", function (x) { return x.host_ip || ""; }]];
      }
    });
  });

  PAGES["admin/sites"] = adminPage("edge/v1/sites", function (c) {
    listPage(c, {
      title: "Edge sites", id: "sites-table",
      load: function () { return api("GET", "edge/v1/sites").then(function (v) { return v.sites || []; }); },
      cols: function () {
        return [["Name (zone)", function (x) { return x.name; }], ["State", function (x) { return statusCell(x.state); }],
          ["Last contact", function (x) { return x.last_contact ? when(x.last_contact) : "never"; }],
          ["Sync lag (revisions)", function (x) { return x.revision_lag === null || x.revision_lag === undefined ? "" : String(x.revision_lag); }],
          ["Nodes (up / all)", function (x) { var r = x.resources || {}; return (r.nodes_up || 0) + " / " + (r.nodes || 0); }],
          ["VCPUs (used / total)", function (x) { var r = x.resources || {}; return (r.vcpus_used || 0) + " / " + (r.vcpus || 0); }],
          ["Servers", function (x) { var r = x.resources || {}; return r.running_vms || 0; }],
          ["Link (in / out)", function (x) { var l = x.link || {}; return fmtBytes(l.bytes_in || 0) + " / " + fmtBytes(l.bytes_out || 0); }],
          ["Round trip", function (x) { var l = x.link || {}; return (l.rtt_ms || 0) + " ms"; }],
          ["Certificate expires", function (x) { return x.certificate_expires_at ? when(x.certificate_expires_at) : ""; }],
          ["Version", function (x) { return x.version || ""; }]];
      }
    });
  });

  PAGES["admin/services"] = adminPage("compute/v2.1/os-services", function (c) {
    listPage(c, {
      title: "Compute services", id: "services-table",
      load: function () { return api("GET", "compute/v2.1/os-services").then(function (v) { return v.services || []; }); },
      cols: function () {
        return [["Binary", function (s) { return s.binary; }], ["Host", function (s) { return s.host; }], ["Zone", function (s) { return s.zone || ""; }],
          ["Status", function (s) { return statusCell(s.status); }], ["State", function (s) { return statusCell(s.state); }],
          ["Updated", function (s) { return when(s.updated_at); }]];
      }
    });
    c.appendChild(h("h2", "Catalog"));
    var box = h("div");
    c.appendChild(box);
    Promise.all([api("GET", "identity/v3/services"), api("GET", "identity/v3/endpoints")]).then(function (r) {
      var eps = r[1].endpoints || [];
      clear(box).appendChild(table([
        ["Service", function (s) { return s.name || ""; }], ["Type", function (s) { return s.type; }],
        ["Endpoints", function (s) { return eps.filter(function (e) { return e.service_id === s.id; }).map(function (e) { return h("div", e["interface"] + ": " + e.url); }); }]
      ], r[0].services || [], "No services.", { id: "catalog-table" }));
    }, function (e) { showError(box, e); });
  });

  // The kit the page's other files (volumes.js) build their pages with;
  // they run after this one and before the page starts.
  window.Stratus = {
    h: h, add: add, clear: clear, main: main, fmtBytes: fmtBytes, when: when, statusCell: statusCell,
    api: api, ApiErr: ApiErr, showError: showError, flash: flash, pid: pid, session: function () { return S.session; },
    poll: poll, stopTimer: stopTimer, table: table, delButton: delButton, listPage: listPage, formPanel: formPanel,
    options: options, adminPage: adminPage, PAGES: PAGES, HOOKS: HOOKS, PAGE_SIZE: PAGE_SIZE,
    // Adds a page to the side menu after the page `after` (or at the end).
    nav: function (admin, key, label, after) {
      var list = admin ? ADMIN : TENANT;
      var at = list.findIndex(function (p) { return p[0] === after; });
      list.splice(at < 0 ? list.length : at + 1, 0, [key, label]);
    }
  };

  document.addEventListener("DOMContentLoaded", start);
})();
