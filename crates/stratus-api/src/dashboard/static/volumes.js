// The dashboard's block storage pages: volumes, volume snapshots, the
// admin's volume types, and the volumes section of a server's page.
//
// Built with the kit app.js exports (window.Stratus): every value goes in
// as text, every call goes through the proxy with the CSRF token. Volumes
// attach and detach through Nova's os-volume_attachments, as Horizon does.
"use strict";

(function () {
  var K = window.Stratus;
  var h = K.h, clear = K.clear, api = K.api, showError = K.showError, statusCell = K.statusCell, when = K.when;
  var CINDER = "volume/v3/";
  var NOVA = "compute/v2.1/";

  K.nav(false, "volumes", "Volumes", "images");
  K.nav(false, "snapshots", "Volume snapshots", "volumes");
  K.nav(true, "admin/volume-types", "Volume types", "admin/hypervisors");

  // Statuses that move on by themselves: a list showing one refreshes soon.
  var MOVING = /^(creating|downloading|attaching|detaching|deleting|extending|reserved|maintenance|uploading|retyping)$/;
  function moving(table) {
    return Array.prototype.some.call(table.querySelectorAll("[data-status]"), function (e) {
      return MOVING.test(e.getAttribute("data-status"));
    });
  }
  function enc(x) { return encodeURIComponent(x); }
  function name(v) { return v.name || v.id; }
  function button(label, action, onclick) {
    var b = h("button", { type: "button", "data-action": action }, label);
    b.addEventListener("click", function () { onclick(b); });
    return b;
  }

  // Server names for attachment rows, fetched once per id.
  var serverNames = {};
  function serverName(id) {
    if (serverNames[id] === undefined) {
      serverNames[id] = api("GET", NOVA + "servers/" + enc(id)).then(function (v) {
        serverNames[id] = v.server.name || id; return serverNames[id];
      }, function () { serverNames[id] = id; return id; });
    }
    return Promise.resolve(serverNames[id]);
  }
  function serverLink(id) {
    var a = h("a", { href: "#/servers/" + enc(id), "data-server": id }, typeof serverNames[id] === "string" ? serverNames[id] : id.slice(0, 8));
    serverName(id).then(function (n) { a.textContent = n; });
    return a;
  }

  // A list the API pages (limit and marker) and filters, following the
  // statuses that move without reloading the page.
  //   opt: id, title, key (the answer's list), path(query) -> API path,
  //        filters [[param, input]], cols(reload), toolbar nodes, empty.
  function pagedList(c, opt) {
    var size = K.PAGE_SIZE;
    var formBox = h("div.form-box");
    var holder = h("div", { id: opt.id + "-holder" }, h("p.loading", "Loading…"));
    var pager = h("div.pager");
    var bar = h("div.toolbar", opt.filters.map(function (f) { return f[1]; }), opt.toolbar || []);
    c.appendChild(bar); c.appendChild(formBox); c.appendChild(holder); c.appendChild(pager);
    var markers = [], marker = "", busy = false, ticks = 0;
    function query() {
      var q = "limit=" + size + (marker ? "&marker=" + enc(marker) : "");
      opt.filters.forEach(function (f) { if (f[1].value) q += "&" + f[0] + "=" + enc(f[1].value); });
      return q;
    }
    // A user who is about to confirm a delete keeps their row: automatic
    // refreshes leave the table alone then.
    function armed() { var t = document.getElementById(opt.id); return t && t.querySelector("button.armed:not([disabled])"); }
    function load(auto) {
      busy = true;
      return api("GET", opt.path(query())).then(function (v) {
        if (auto === true && armed()) return;
        var rows = v[opt.key] || [];
        var filtered = opt.filters.some(function (f) { return f[1].value; });
        clear(holder).appendChild(K.table(opt.cols(load, formBox), rows, filtered ? "Nothing matches." : opt.empty, { id: opt.id }));
        clear(pager);
        var prev = h("button", { id: opt.id + "-prev", type: "button", disabled: !markers.length }, "‹ Previous");
        prev.addEventListener("click", function () { marker = markers.pop() || ""; load(); });
        var next = h("button", { id: opt.id + "-next", type: "button", disabled: rows.length < size }, "Next ›");
        next.addEventListener("click", function () { markers.push(marker); marker = rows[rows.length - 1].id; load(); });
        pager.appendChild(prev); pager.appendChild(next);
        pager.appendChild(h("span.muted", rows.length + " shown"));
      }, function (e) {
        // A marker that is gone (its row was deleted): back to the first page.
        if (e.status === 404 && marker) { markers = []; marker = ""; return load(); }
        clear(holder); showError(holder, e);
      }).then(function () { busy = false; }, function () { busy = false; });
    }
    var typing = null;
    opt.filters.forEach(function (f) {
      f[1].addEventListener(f[1].tagName === "SELECT" ? "change" : "input", function () {
        clearTimeout(typing);
        typing = setTimeout(function () { markers = []; marker = ""; load(); }, 300);
      });
    });
    load();
    // Live status: soon while something moves, else now and then.
    K.poll(function () {
      var t = document.getElementById(opt.id);
      ticks++;
      if (busy || !t || armed()) return;
      if (moving(t) || ticks % 5 === 0) load(true);
    }, 1000);
    return { load: load, refresh: function () { return load(true); }, formBox: formBox };
  }

  // Opens `form` in the list's form box (closing what was there).
  function openForm(box, form) { clear(box).appendChild(form); var f = form.querySelector("input, select"); if (f) f.focus(); }
  function closer(box, reload) { return function () { clear(box); return reload(); }; }

  // ---- volumes ----------------------------------------------------------------

  K.PAGES.volumes = { render: function (c, arg) {
    if (arg) return volumeDetail(c, arg);
    c.appendChild(h("h1", "Volumes"));
    var filter = h("input#volume-filter", { type: "text", placeholder: "Name (exact)" });
    var status = K.options(h("select#volume-status-filter", { title: "Status" }),
      ["available", "in-use", "creating", "attaching", "detaching", "extending", "deleting", "error"].map(function (x) { return { id: x }; }),
      function (x) { return x.id; }, "(any status)");
    var create = h("button.primary#volume-create", { type: "button", "data-action": "create" }, "Create volume");
    var list = pagedList(c, {
      id: "volumes-table", key: "volumes", empty: "No volumes yet.",
      path: function (q) { return CINDER + "volumes/detail?" + q; },
      filters: [["name", filter], ["status", status]], toolbar: [create],
      cols: function (reload, box) { return volumeCols(reload, box); }
    });
    create.addEventListener("click", function () {
      if (list.formBox.firstChild) { clear(list.formBox); return; }
      openForm(list.formBox, volumeForm(closer(list.formBox, list.load), {}));
    });
  } };

  function attachedTo(v) {
    return (v.attachments || []).map(function (a) {
      return h("div.attachment", serverLink(a.server_id), a.device ? h("span.muted", " on " + a.device) : null);
    });
  }

  function volumeCols(reload, box) {
    return [
      ["Name", function (v) { return h("a", { href: "#/volumes/" + enc(v.id) }, name(v)); }],
      ["Description", function (v) { return v.description || ""; }],
      ["Size", function (v) { return v.size + "\u00a0GiB"; }],
      ["Status", function (v) { return statusCell(v.status); }],
      ["Type", function (v) { return v.volume_type || ""; }],
      ["Attached to", attachedTo],
      ["Zone", function (v) { return v.availability_zone || ""; }],
      ["Bootable", function (v) { return v.bootable === "true" || v.bootable === true ? "yes" : "no"; }],
      ["Actions", function (v) { return volumeActions(v, reload, box); }]
    ];
  }

  function volumeActions(v, reload, box) {
    var st = v.status, done = closer(box, reload);
    return h("span.actions",
      button("Edit", "edit", function () { openForm(box, editForm("volume", v, done)); }),
      st === "available" ? button("Extend", "extend", function () { openForm(box, extendForm(v, done)); }) : null,
      st === "available" ? button("Attach", "attach", function () { openForm(box, attachForm(v, done)); }) : null,
      st === "in-use" ? (v.attachments || []).map(function (a) {
        var known = typeof serverNames[a.server_id] === "string" ? serverNames[a.server_id] : a.server_id;
        return button(v.attachments.length > 1 ? "Detach from " + known : "Detach", "detach", function (b) {
          b.disabled = true;
          detach(a.server_id, v.id).then(reload, function (e) { b.disabled = false; showError(K.main(), e); });
        });
      }) : null,
      st === "available" ? button("Snapshot", "snapshot", function () { openForm(box, snapshotForm(done, v)); }) : null,
      K.delButton("Delete", function () {
        api("DELETE", CINDER + "volumes/" + enc(v.id)).then(reload, function (e) { reload(); showError(K.main(), e); });
      }));
  }

  function detach(serverId, volumeId) {
    return api("DELETE", NOVA + "servers/" + enc(serverId) + "/os-volume_attachments/" + enc(volumeId));
  }

  // Create a volume: empty, from an image or from a snapshot (`pre.snapshot`).
  function volumeForm(done, pre) {
    var vname = h("input#volume-name", { type: "text" });
    var desc = h("input#volume-description", { type: "text" });
    var size = h("input#volume-size", { type: "number", min: 1, value: pre.snapshot ? pre.snapshot.size : 1, placeholder: "GiB" });
    var source = h("select#volume-source");
    var type = h("select#volume-type");
    var zone = h("select#volume-zone");
    var f;
    source.appendChild(h("option", { value: "" }, "(empty volume)"));
    var imgs = h("optgroup", { label: "Image" }), snaps = h("optgroup", { label: "Snapshot" });
    source.appendChild(imgs); source.appendChild(snaps);
    if (pre.snapshot) {
      snaps.appendChild(h("option", { value: "snapshot:" + pre.snapshot.id, selected: true }, "snapshot " + name(pre.snapshot)));
    } else {
      api("GET", "image/v2/images?status=active&limit=200").then(function (v) {
        // Only disk images make volumes.
        (v.images || []).filter(function (i) {
          return ["raw", "qcow2", "vmdk", "vdi", "vhd", "vhdx", "iso"].indexOf(i.disk_format) >= 0 &&
            ["docker", "oci"].indexOf(i.container_format) < 0;
        }).forEach(function (i) {
          imgs.appendChild(h("option", { value: "image:" + i.id, "data-min": Math.max(i.min_disk || 0, Math.ceil((i.virtual_size || i.size || 0) / 1073741824), 1) },
            (i.name || i.id) + " (" + K.fmtBytes(i.size) + ")"));
        });
      }, function (e) { showError(f, e); });
      api("GET", CINDER + "snapshots/detail?status=available&limit=200").then(function (v) {
        (v.snapshots || []).forEach(function (s) {
          snaps.appendChild(h("option", { value: "snapshot:" + s.id, "data-min": s.size }, name(s) + " (" + s.size + " GiB)"));
        });
      }, function () {});
    }
    // The size a source needs, as the default.
    source.addEventListener("change", function () {
      var o = source.options[source.selectedIndex];
      var min = o && o.getAttribute("data-min");
      if (min) { size.min = min; if ((parseInt(size.value, 10) || 0) < min) size.value = min; } else size.min = 1;
    });
    api("GET", CINDER + "types").then(function (v) {
      K.options(type, (v.volume_types || []).map(function (t) { return { id: t.name, d: t.description }; }),
        function (t) { return t.id + (t.d ? " (" + t.d + ")" : ""); }, "(default)");
    }, function () { K.options(type, [], null, "(default)"); });
    api("GET", CINDER + "os-availability-zone").then(function (v) {
      K.options(zone, (v.availabilityZoneInfo || []).map(function (z) { return { id: z.zoneName, up: z.zoneState && z.zoneState.available }; }),
        function (z) { return z.id + (z.up ? "" : " (no storage up)"); }, "(any zone)");
    }, function () { K.options(zone, [], null, "(any zone)"); });
    // A copy of a snapshot stays in its volume's zone.
    f = K.formPanel("volume-form", [["Name", vname], ["Description", desc], ["Size (GiB)", size], ["Source", source],
      ["Type", type]].concat(pre.snapshot ? [] : [["Availability zone", zone]]), "Create volume", function () {
      var body = { name: vname.value, size: parseInt(size.value, 10) };
      if (desc.value) body.description = desc.value;
      if (!(body.size >= 1)) throw new K.ApiErr(400, "The size must be a whole number of GiB, at least 1.");
      var src = source.value.split(":");
      if (src[0] === "image") body.imageRef = src[1];
      if (src[0] === "snapshot") body.snapshot_id = src[1];
      if (type.value) body.volume_type = type.value;
      if (zone.value && src[0] !== "snapshot") body.availability_zone = zone.value;
      return api("POST", CINDER + "volumes", { volume: body }).then(done);
    });
    if (pre.snapshot) f.insertBefore(h("h3", "New volume from snapshot " + name(pre.snapshot)), f.firstChild);
    return f;
  }

  // Edit the name and description of a volume or a snapshot.
  function editForm(kind, x, done) {
    var n = h("input", { id: kind + "-edit-name", type: "text", value: x.name || "" });
    var d = h("input", { id: kind + "-edit-description", type: "text", value: x.description || "" });
    var f = K.formPanel(kind + "-edit-form", [["Name", n], ["Description", d]], "Save", function () {
      var body = {}; body[kind] = { name: n.value, description: d.value };
      return api("PUT", CINDER + kind + "s/" + enc(x.id), body).then(done);
    });
    f.insertBefore(h("h3", "Edit " + name(x)), f.firstChild);
    return f;
  }

  function extendForm(v, done) {
    var size = h("input#volume-extend-size", { type: "number", min: v.size + 1, value: v.size + 1 });
    var f = K.formPanel("volume-extend-form", [["New size (GiB)", size]], "Extend", function () {
      return api("POST", CINDER + "volumes/" + enc(v.id) + "/action", { "os-extend": { new_size: parseInt(size.value, 10) } }).then(done);
    });
    f.insertBefore(h("h3", "Extend " + name(v) + " (now " + v.size + " GiB)"), f.firstChild);
    return f;
  }

  // Attach through Nova, as Horizon does; the API's refusal (a locked server,
  // another node) is shown in the form.
  function attachForm(v, done) {
    var server = h("select#volume-attach-server", { required: true });
    var device = h("input#volume-attach-device", { type: "text", placeholder: "(first free, e.g. /dev/vdb)" });
    var f = K.formPanel("volume-attach-form", [["Server", server], ["Device", device]], "Attach", function () {
      var a = { volumeId: v.id };
      if (device.value.trim()) a.device = device.value.trim();
      return api("POST", NOVA + "servers/" + enc(server.value) + "/os-volume_attachments", { volumeAttachment: a }).then(done);
    });
    f.insertBefore(h("h3", "Attach " + name(v)), f.firstChild);
    api("GET", NOVA + "servers/detail?limit=200").then(function (r) {
      var ok = (r.servers || []).filter(function (s) { return ["ACTIVE", "SHUTOFF", "PAUSED", "SUSPENDED"].indexOf(s.status) >= 0; });
      ok.forEach(function (s) { serverNames[s.id] = s.name || s.id; });
      K.options(server, ok, function (s) { return (s.name || s.id) + " (" + s.status + (s["OS-EXT-AZ:availability_zone"] ? ", " + s["OS-EXT-AZ:availability_zone"] : "") + ")"; });
      if (!ok.length) server.appendChild(h("option", { value: "" }, "(no server to attach to)"));
    }, function (e) { showError(f, e); });
    return f;
  }

  function volumeDetail(c, id) {
    var title = h("h1", "Volume");
    var box = h("div", h("p.loading", "Loading…"));
    var actions = h("div.toolbar");
    var formBox = h("div.form-box");
    var snapBox = h("div");
    c.appendChild(h("p", h("a", { href: "#/volumes" }, "‹ Volumes")));
    c.appendChild(title); c.appendChild(actions); c.appendChild(formBox); c.appendChild(box);
    c.appendChild(h("h2", "Snapshots")); c.appendChild(snapBox);
    var last = "";
    function load() {
      return Promise.all([
        api("GET", CINDER + "volumes/" + enc(id)),
        api("GET", CINDER + "snapshots/detail?volume_id=" + enc(id)).catch(function () { return { snapshots: [] }; })
      ]).then(function (r) {
        var v = r[0].volume;
        var names = {}; names[v.id] = name(v);
        title.textContent = "Volume " + name(v);
        // Buttons are redrawn only when the volume changed (a form may be open).
        var sig = JSON.stringify(v);
        if (sig !== last) {
          last = sig;
          clear(actions).appendChild(volumeActions(v, load, formBox));
          var src = v.snapshot_id ? h("a", { href: "#/snapshots" }, "snapshot " + v.snapshot_id) :
            v.source_volid ? h("a", { href: "#/volumes/" + enc(v.source_volid) }, "volume " + v.source_volid) :
            v.volume_image_metadata ? "image " + (v.volume_image_metadata.image_name || v.volume_image_metadata.image_id) : "";
          var meta = Object.keys(v.metadata || {}).map(function (k) { return h("div", k + " = " + v.metadata[k]); });
          var props = [["ID", v.id], ["Name", v.name || ""], ["Description", v.description || ""], ["Size", v.size + "\u00a0GiB"],
            ["Status", statusCell(v.status)], ["Type", v.volume_type || ""], ["Availability zone", v.availability_zone || ""],
            ["Bootable", v.bootable === "true" ? "yes" : "no"], ["Attached to", attachedTo(v)], ["Source", src],
            ["Metadata", meta], ["Created", when(v.created_at)], ["Updated", when(v.updated_at)]];
          var dl = h("dl.props#volume-props");
          props.forEach(function (p) { dl.appendChild(h("dt", p[0])); dl.appendChild(h("dd", p[1])); });
          clear(box).appendChild(dl);
        }
        clear(snapBox).appendChild(K.table(snapshotCols(load, formBox, names), r[1].snapshots || [], "No snapshots of this volume.", { id: "volume-snapshots-table" }));
      }, function (e) {
        // Deleted while shown: back to the list, where its row is gone.
        if (e.status === 404 && last) { location.hash = "#/volumes"; return; }
        clear(box); clear(actions); showError(box, e);
        if (e.status === 404) K.stopTimer();
      });
    }
    load();
    K.poll(function () { if (!c.querySelector("button.armed:not([disabled])")) load(); }, 2000);
  }

  // ---- snapshots --------------------------------------------------------------

  function snapshotForm(done, vol) {
    var volume = h("select#snapshot-volume", { required: true });
    var n = h("input#snapshot-name", { type: "text" });
    var d = h("input#snapshot-description", { type: "text" });
    if (vol) {
      volume.appendChild(h("option", { value: vol.id, selected: true }, name(vol)));
    } else {
      api("GET", CINDER + "volumes/detail?status=available&limit=200").then(function (v) {
        K.options(volume, v.volumes || [], function (x) { return name(x) + " (" + x.size + " GiB)"; });
      }, function (e) { showError(f, e); });
    }
    var f = K.formPanel("snapshot-form", [["Volume", volume], ["Name", n], ["Description", d]], "Create snapshot", function () {
      var s = { volume_id: volume.value, name: n.value };
      if (d.value) s.description = d.value;
      return api("POST", CINDER + "snapshots", { snapshot: s }).then(done);
    });
    if (vol) f.insertBefore(h("h3", "Snapshot of " + name(vol)), f.firstChild);
    return f;
  }

  function snapshotCols(reload, box, volumes) {
    return [
      ["Name", function (s) { return name(s); }],
      ["Description", function (s) { return s.description || ""; }],
      ["Volume", function (s) { return h("a", { href: "#/volumes/" + enc(s.volume_id) }, volumes[s.volume_id] || s.volume_id.slice(0, 8)); }],
      ["Size", function (s) { return s.size + "\u00a0GiB"; }],
      ["Status", function (s) { return statusCell(s.status); }],
      ["Created", function (s) { return when(s.created_at); }],
      ["Actions", function (s) {
        return h("span.actions",
          s.status === "available" ? button("Create volume", "create-volume", function () {
            // The new volume is followed on the volumes page.
            openForm(box, volumeForm(function () { location.hash = "#/volumes"; }, { snapshot: s }));
          }) : null,
          button("Edit", "edit", function () { openForm(box, editForm("snapshot", s, closer(box, reload))); }),
          K.delButton("Delete", function () {
            api("DELETE", CINDER + "snapshots/" + enc(s.id)).then(reload, function (e) { reload(); showError(K.main(), e); });
          }));
      }]
    ];
  }

  K.PAGES.snapshots = { render: function (c) {
    c.appendChild(h("h1", "Volume snapshots"));
    var filter = h("input#snapshot-filter", { type: "text", placeholder: "Name (exact)" });
    var create = h("button.primary#snapshot-create", { type: "button", "data-action": "create" }, "Create snapshot");
    var volumes = {};
    var list = pagedList(c, {
      id: "snapshots-table", key: "snapshots", empty: "No snapshots yet.",
      path: function (q) { return CINDER + "snapshots/detail?" + q; },
      filters: [["name", filter]], toolbar: [create],
      cols: function (reload, box) { return snapshotCols(reload, box, volumes); }
    });
    create.addEventListener("click", function () {
      if (list.formBox.firstChild) { clear(list.formBox); return; }
      openForm(list.formBox, snapshotForm(closer(list.formBox, list.load)));
    });
    // Names for the volume column, then again with names.
    api("GET", CINDER + "volumes?limit=1000").then(function (v) {
      (v.volumes || []).forEach(function (x) { volumes[x.id] = name(x); });
      list.refresh();
    }, function () {});
  } };

  // ---- a server's volumes -----------------------------------------------------

  K.HOOKS.serverDetail.push(function (sec, serverId) {
    var list = h("div#server-volumes", h("p.loading", "Loading…"));
    var formBox = h("div.form-box");
    var attach = h("button#server-volume-attach", { type: "button", "data-action": "attach-volume" }, "Attach volume");
    sec.appendChild(h("h2", "Volumes"));
    sec.appendChild(h("div.toolbar", attach));
    sec.appendChild(formBox); sec.appendChild(list);
    var last = "";
    function refresh() {
      return api("GET", NOVA + "servers/" + enc(serverId) + "/os-volume_attachments").then(function (r) {
        var atts = r.volumeAttachments || [];
        return Promise.all(atts.map(function (a) {
          return api("GET", CINDER + "volumes/" + enc(a.volumeId)).then(function (v) { return v.volume; }, function () { return null; });
        })).then(function (vols) {
          var rows = atts.map(function (a, i) { return { id: a.volumeId, device: a.device, v: vols[i] || {} }; });
          var sig = JSON.stringify(rows);
          if (sig === last && !list.querySelector(".loading")) return;
          last = sig;
          clear(list).appendChild(K.table([
            ["Volume", function (x) { return h("a", { href: "#/volumes/" + enc(x.id) }, x.v.name || x.id); }],
            ["Device", function (x) { return x.device || ""; }],
            ["Size", function (x) { return x.v.size ? x.v.size + "\u00a0GiB" : ""; }],
            ["Status", function (x) { return statusCell(x.v.status); }],
            ["", function (x) {
              return x.v.status === "in-use" ? button("Detach", "detach", function (b) {
                b.disabled = true;
                detach(serverId, x.id).then(refresh, function (e) { b.disabled = false; showError(sec, e); });
              }) : null;
            }]
          ], rows, "No volumes attached.", { id: "server-volumes-table" }));
        });
      }, function (e) { clear(list); showError(list, e); });
    }
    attach.addEventListener("click", function () {
      if (formBox.firstChild) { clear(formBox); return; }
      var vol = h("select#server-volume-select", { required: true });
      api("GET", CINDER + "volumes/detail?status=available&limit=200").then(function (v) {
        K.options(vol, v.volumes || [], function (x) { return name(x) + " (" + x.size + " GiB)"; });
        if (!vol.options.length) vol.appendChild(h("option", { value: "" }, "(no available volume)"));
      }, function (e) { showError(formBox, e); });
      formBox.appendChild(K.formPanel("server-volume-form", [["Volume", vol]], "Attach", function () {
        return api("POST", NOVA + "servers/" + enc(serverId) + "/os-volume_attachments", { volumeAttachment: { volumeId: vol.value } })
          .then(function () { clear(formBox); return refresh(); });
      }));
    });
    return refresh;
  });

  // ---- admin: volume types ----------------------------------------------------

  // The probe is the volume services list, which Cinder gives admins only
  // (any member may read the public types themselves).
  K.PAGES["admin/volume-types"] = K.adminPage(CINDER + "os-services", function (c) {
    K.listPage(c, {
      title: "Volume types", id: "volume-types-table", formTitle: "Create volume type",
      load: function () { return api("GET", CINDER + "types?is_public=None").then(function (v) { return v.volume_types || []; }); },
      cols: function (reload) {
        return [["Name", function (t) { return t.name; }], ["Description", function (t) { return t.description || ""; }],
          ["Public", function (t) { return t.is_public ? "yes" : "no"; }],
          ["Extra specs", function (t) { var s = t.extra_specs || {}; return Object.keys(s).map(function (k) { return h("div", k + " = " + s[k]); }); }],
          ["", function (t) { return t.name === "__DEFAULT__" ? null : K.delButton("Delete", function () {
            api("DELETE", CINDER + "types/" + enc(t.id)).then(reload, function (e) { reload(); showError(c, e); });
          }); }]];
      },
      form: function (done) {
        var n = h("input#volume-type-name", { type: "text", required: true });
        var d = h("input#volume-type-description", { type: "text" });
        var pub = h("input#volume-type-public", { type: "checkbox", checked: true });
        var specs = h("textarea#volume-type-specs", { rows: 3, placeholder: "key=value, one a line (e.g. multiattach=<is> True)" });
        return K.formPanel("volume-type-form", [["Name", n], ["Description", d], ["Public", pub], ["Extra specs", specs]], "Create", function () {
          var t = { name: n.value, "os-volume-type-access:is_public": pub.checked };
          if (d.value) t.description = d.value;
          var es = {};
          specs.value.split("\n").forEach(function (line) {
            var i = line.indexOf("=");
            if (i > 0) es[line.slice(0, i).trim()] = line.slice(i + 1).trim();
          });
          if (Object.keys(es).length) t.extra_specs = es;
          return api("POST", CINDER + "types", { volume_type: t }).then(done);
        });
      }
    });
    c.appendChild(h("h2", "Storage nodes"));
    var box = h("div", h("p.loading", "Loading…"));
    c.appendChild(box);
    api("GET", CINDER + "os-services").then(function (v) {
      var nodes = (v.services || []).filter(function (s) { return s.binary === "cinder-volume"; })
        .map(function (s) { s.id = s.host; return s; });
      clear(box).appendChild(K.table([
        ["Host", function (s) { return s.host; }], ["Zone", function (s) { return s.zone || ""; }],
        ["Status", function (s) { return statusCell(s.status); }], ["State", function (s) { return statusCell(s.state); }],
        ["Last report", function (s) { return when(s.updated_at); }]
      ], nodes, "No storage node has registered.", { id: "storage-nodes-table" }));
    }, function (e) { clear(box); showError(box, e); });
  });
})();
