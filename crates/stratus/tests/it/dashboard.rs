//! The web dashboard, driven in a real headless Chromium through
//! WebDriver (the distribution's `chromium` and `chromium-driver`;
//! `scripts/test` installs them, and without them these tests fail), and
//! its session, CSRF and proxy rules over plain HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::Server;
use super::compute::Cloud;
use super::volume::{vol_client, wait_status, wait_storage};

/// A headless Chromium under a chromedriver of this test's own.
pub struct Browser {
    driver: Child,
    wd: String,
    session: String,
    base: String,
    profile: PathBuf,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

impl Browser {
    /// Starts chromedriver on a free port and a browser session; `base` is
    /// the cloud's URL.
    pub fn start(base: &str) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver cannot be started ({e}): the dashboard tests need the \
                     chromium and chromium-driver packages (scripts/test installs them)"
                )
            });
        let profile =
            std::env::temp_dir().join(format!("stratus-chrome-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut b = Browser {
            driver,
            wd: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            base: base.to_string(),
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut r) = agent().get(format!("{}/status", b.wd)).call() {
                let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", b.profile.display()),
            ]}
        }}});
        let v = b.wd_call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        b
    }

    /// A WebDriver call; its `value`.
    fn wd_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.wd);
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Content-Type", "application/json");
        let resp = match body {
            Some(b) => agent().run(req.body(b.to_string()).unwrap()),
            None => agent().run(req.body(()).unwrap()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status().as_u16();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        assert!(status < 400, "WebDriver {method} {path}: {status} {v}");
        v["value"].clone()
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Opens `path` of the cloud.
    pub fn goto(&self, path: &str) {
        self.wd_call(
            "POST",
            &self.s("/url"),
            Some(json!({"url": format!("{}{path}", self.base)})),
        );
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub fn js(&self, script: &str) -> Value {
        self.wd_call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Waits until `script` returns a truthy value; returns it.
    pub fn wait(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            if Instant::now() >= deadline {
                let text = self.js("return document.body ? document.body.innerText : ''");
                panic!("waiting for {what}: never happened; the page shows:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The element `css` matches (waiting for it).
    pub fn find(&self, css: &str) -> String {
        let sel = serde_json::to_string(css).unwrap();
        self.wait(
            css,
            &format!("return document.querySelector({sel}) !== null"),
        );
        let v = self.wd_call(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("element {css}: {v}"))
            .to_string()
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.wd_call(
            "POST",
            &self.s(&format!("/element/{e}/click")),
            Some(json!({})),
        );
    }

    /// Types `text` into the field `css` (after clearing it).
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        if !css.contains("file") {
            self.wd_call(
                "POST",
                &self.s(&format!("/element/{e}/clear")),
                Some(json!({})),
            );
        }
        self.wd_call(
            "POST",
            &self.s(&format!("/element/{e}/value")),
            Some(json!({"text": text})),
        );
    }

    /// Chooses the option of select `css` whose text contains `text`,
    /// waiting for the options to load.
    pub fn choose(&self, css: &str, text: &str) {
        let sel = serde_json::to_string(css).unwrap();
        let t = serde_json::to_string(text).unwrap();
        self.wait(
            &format!("option {text} in {css}"),
            &format!(
                "var s = document.querySelector({sel}); if (!s) return false;
                 var o = Array.prototype.find.call(s.options, function (o) {{ return o.textContent.indexOf({t}) >= 0; }});
                 if (!o) return false; s.value = o.value; s.dispatchEvent(new Event('change')); return true;"
            ),
        );
    }

    /// The visible text of the page.
    pub fn text(&self) -> String {
        self.js("return document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Logs in through the form; waits for the dashboard to show.
    pub fn login(&self, user: &str, password: &str, project: &str) {
        self.goto("/dashboard");
        self.fill("#login-username", user);
        self.fill("#login-password", password);
        self.fill("#login-project", project);
        self.click("#login-submit");
        self.find("#whoami");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = agent()
                .delete(format!("{}/session/{}", self.wd, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// JS: whether the servers table has a row naming `name` with `status`.
fn row_with(table: &str, name: &str, status: &str) -> String {
    format!(
        "return Array.prototype.some.call(document.querySelectorAll('#{table} tbody tr'), function (tr) {{
           return tr.cells[0].textContent === {n} && tr.querySelector('[data-status={s}]') !== null; }})",
        n = serde_json::to_string(name).unwrap(),
        s = serde_json::to_string(status).unwrap(),
    )
}

#[test]
fn dashboard_server_lifecycle_and_image_upload_in_a_browser() {
    let c = Cloud::start(&["--driver", "fake"]);
    let (_pid, tok) = c.project("web");
    c.image(&tok, "busybox");
    let b = Browser::start(&c.server.url);
    b.login("web-user", "pw-12345", "web");
    assert!(b.text().contains("web-user"));

    // Create a server from the form; the page is never reloaded while it
    // builds (a marker set on the window survives).
    b.goto("/dashboard#/servers");
    b.find("#servers-table");
    b.js("window.stillTheSamePage = true; return null");
    b.click("#server-create");
    b.fill("#new-server-name", "web-1");
    b.choose("#new-server-image", "busybox");
    b.choose("#new-server-flavor", "m1.tiny");
    b.click("#server-form button[type=submit]");
    b.wait(
        "web-1 ACTIVE",
        &row_with("servers-table", "web-1", "ACTIVE"),
    );
    assert_eq!(b.js("return window.stillTheSamePage === true"), true);
    let id = c.req("GET", "/servers?name=web-1", &tok, None).body["servers"][0]["id"]
        .as_str()
        .expect("the server exists in the API")
        .to_string();

    // Its page: the console log, then stop it.
    b.click("#servers-table tbody tr a");
    b.wait(
        "the console log",
        "var p = document.getElementById('console-log'); return p && p.getAttribute('data-loaded') === '1' && p.textContent",
    );
    assert!(
        b.text().contains(&format!("instance {id} runs nothing")),
        "{}",
        b.text()
    );
    b.click("#content button[data-action=stop]");
    b.wait(
        "SHUTOFF",
        "return document.querySelector('#server-props [data-status=SHUTOFF]') !== null",
    );
    c.wait(&tok, &id, "SHUTOFF");

    // Back to the list and delete it (the button asks once more).
    b.goto("/dashboard#/servers");
    b.wait(
        "web-1 SHUTOFF",
        &row_with("servers-table", "web-1", "SHUTOFF"),
    );
    b.click("#servers-table button[data-action=delete]");
    b.click("#servers-table button.armed");
    b.wait(
        "the server gone",
        "var t = document.querySelector('#servers-table'); return t && t.textContent.indexOf('web-1') < 0",
    );
    c.wait_gone(&tok, &id);

    // Upload an image with the progress bar; it turns active.
    let file = std::env::temp_dir().join(format!("stratus-dash-upload-{}.raw", std::process::id()));
    std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
    b.goto("/dashboard#/images");
    b.find("#images-table");
    b.click("#content button[data-action=create]");
    b.fill("#image-name", "uploaded-disk");
    b.choose("#image-disk-format", "raw");
    b.choose("#image-container-format", "bare");
    b.fill("#image-file", file.to_str().unwrap());
    b.click("#image-form button[type=submit]");
    b.wait(
        "uploaded-disk active",
        &row_with("images-table", "uploaded-disk", "active"),
    );
    let _ = std::fs::remove_file(&file);
    let r = c.img.get("/images?name=uploaded-disk", &tok);
    assert_eq!(r.body["images"][0]["status"], "active", "{}", r.body);
    assert_eq!(r.body["images"][0]["size"], 3 << 20);

    // Log out: back to the form, and the session is gone.
    b.click("#logout");
    b.find("#login-form");
    b.goto("/dashboard#/servers");
    b.find("#login-form");
}

/// Uploads a small raw disk image: servers booted from it are VMs (a fake
/// node never reads it; a storage node can make a volume of it).
fn vm_image(c: &Cloud, token: &str, name: &str) -> String {
    let r = c.img.post(
        "/images",
        token,
        json!({"name": name, "disk_format": "raw", "container_format": "bare"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let (st, _, body) = c.img.bytes(
        "PUT",
        &format!("/images/{id}/file"),
        token,
        &[("Content-Type", "application/octet-stream")],
        Some(vec![0u8; 1 << 20]),
    );
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    id
}

/// Clicks the (enabled) button `action` in the row of `table` whose first
/// cell is `name`, waiting for it.
fn click_in_row(b: &Browser, table: &str, name: &str, action: &str) {
    b.wait(
        &format!("{action} on {name}"),
        &format!(
            "var tr = Array.prototype.find.call(document.querySelectorAll('#{table} tbody tr'), function (tr) {{
               return tr.cells[0].textContent === {n}; }});
             var btn = tr && tr.querySelector('button[data-action={a}]:not([disabled])');
             if (!btn) return false; btn.click(); return true;",
            n = serde_json::to_string(name).unwrap(),
            a = serde_json::to_string(action).unwrap(),
        ),
    );
}

/// A JS expression: the text of the row of `table` whose first cell is
/// `name` ('' if none).
fn row_text(table: &str, name: &str) -> String {
    format!(
        "(function () {{ var tr = Array.prototype.find.call(document.querySelectorAll('#{table} tbody tr'), function (tr) {{
           return tr.cells[0].textContent === {n}; }}); return tr ? tr.textContent : ''; }})()",
        n = serde_json::to_string(name).unwrap(),
    )
}

/// A member's volumes in the browser: create one and watch it become
/// available, snapshot it, make a volume of the snapshot, attach (a
/// locked server is refused with the API's message, a VM takes it) and detach,
/// a refused delete, the server's page and the overview's quota, and
/// everything deleted again; the page is never reloaded.
#[test]
fn dashboard_volumes_snapshots_and_attachments_in_a_browser() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let (_pid, tok) = c.project("vols");
    let vm_img = vm_image(&c, &tok, "disk-image");
    let ctr_img = c.image(&tok, "busybox");
    let mut servers = vec![];
    for (name, img) in [("vm-1", &vm_img), ("ctr-1", &ctr_img)] {
        let r = c.boot(&tok, name, img, "1", json!({}));
        assert_eq!(r.status, 202, "{}", r.body);
        servers.push(r.body["server"]["id"].as_str().unwrap().to_string());
    }
    for id in &servers {
        c.wait(&tok, id, "ACTIVE");
    }
    let vc = vol_client(&c);
    let b = Browser::start(&c.server.url);
    b.login("vols-user", "pw-12345", "vols");

    // Create: the row follows creating -> available without a reload.
    b.goto("/dashboard#/volumes");
    b.find("#volumes-table");
    b.js("window.stillTheSamePage = true; return null");
    b.click("#volume-create");
    b.fill("#volume-name", "data-1");
    b.fill("#volume-size", "2");
    b.choose("#volume-type", "__DEFAULT__");
    b.click("#volume-form button[type=submit]");
    b.wait(
        "data-1 available",
        &row_with("volumes-table", "data-1", "available"),
    );
    let vid = vc.get("/volumes?name=data-1", &tok).body["volumes"][0]["id"]
        .as_str()
        .expect("data-1 exists in the API")
        .to_string();
    let text = b.js(&format!("return {}", row_text("volumes-table", "data-1")));
    assert!(text.as_str().unwrap().contains("2\u{a0}GiB"), "{text}");

    // Extend it to 3 GiB.
    click_in_row(&b, "volumes-table", "data-1", "extend");
    b.fill("#volume-extend-size", "3");
    b.click("#volume-extend-form button[type=submit]");
    b.wait(
        "data-1 at 3 GiB",
        &format!(
            "return {}.indexOf('3\\u00a0GiB') >= 0",
            row_text("volumes-table", "data-1")
        ),
    );
    b.wait(
        "data-1 available again",
        &row_with("volumes-table", "data-1", "available"),
    );

    // A snapshot of it, then a volume made from the snapshot.
    click_in_row(&b, "volumes-table", "data-1", "snapshot");
    b.fill("#snapshot-name", "snap-1");
    b.click("#snapshot-form button[type=submit]");
    b.goto("/dashboard#/snapshots");
    b.wait(
        "snap-1 available",
        &row_with("snapshots-table", "snap-1", "available"),
    );
    // The volume's own page lists its snapshot.
    b.goto(&format!("/dashboard#/volumes/{vid}"));
    b.wait(
        "snap-1 on data-1's page",
        &row_with("volume-snapshots-table", "snap-1", "available"),
    );
    let props = b.js("return document.getElementById('volume-props').textContent");
    assert!(props.as_str().unwrap().contains(&vid), "{props}");
    b.goto("/dashboard#/snapshots");
    click_in_row(&b, "snapshots-table", "snap-1", "create-volume");
    b.fill("#volume-name", "from-snap");
    b.click("#volume-form button[type=submit]");
    b.wait(
        "from-snap available on the volumes page",
        &row_with("volumes-table", "from-snap", "available"),
    );
    let r = vc.get("/volumes/detail?name=from-snap", &tok);
    assert_eq!(r.body["volumes"][0]["size"], 3, "{}", r.body);
    assert!(
        r.body["volumes"][0]["snapshot_id"].is_string(),
        "{}",
        r.body
    );

    // The overview counts them.
    b.goto("/dashboard#/overview");
    let fig = b.wait(
        "the volume quota cards",
        "var f = document.querySelector('[data-quota=volumes] .figure'); var g = document.querySelector('[data-quota=gigabytes] .figure');
         var s = document.querySelector('[data-quota=snapshots] .figure');
         return f && g && s && [f.textContent, g.textContent, s.textContent]",
    );
    let figs: Vec<&str> = fig
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(figs[0].starts_with("2 / "), "{fig}");
    assert!(figs[1].starts_with("9 / "), "volumes and snapshot: {fig}");
    assert!(figs[2].starts_with("1 / "), "{fig}");
    assert!(
        b.js("return document.querySelector('[data-quota=instances]') !== null") == true,
        "compute quotas are still there"
    );

    // Attach: a locked server is refused with the API's message, in the
    // form.
    let lock = |action: &str| {
        let r = c.req(
            "POST",
            &format!("/servers/{}/action", servers[1]),
            &tok,
            Some(json!({ action: null })),
        );
        assert_eq!(r.status, 202, "{action}: {}", r.body);
    };
    lock("lock");
    b.goto("/dashboard#/volumes");
    click_in_row(&b, "volumes-table", "data-1", "attach");
    b.choose("#volume-attach-server", "ctr-1");
    b.click("#volume-attach-form button[type=submit]");
    let err = b.wait(
        "the locked refusal",
        "var e = document.querySelector('#volume-attach-form .error'); return e && [e.getAttribute('data-status'), e.textContent]",
    );
    assert_eq!(err[0], "409", "{err}");
    assert!(err[1].as_str().unwrap().contains("locked"), "{err}");
    lock("unlock");
    // A VM takes it: in-use, with the server named and the device.
    b.choose("#volume-attach-server", "vm-1");
    b.click("#volume-attach-form button[type=submit]");
    b.wait(
        "data-1 in-use",
        &row_with("volumes-table", "data-1", "in-use"),
    );
    let text = b.wait(
        "the server named",
        &format!(
            "var t = {}; return t.indexOf('vm-1') >= 0 && t",
            row_text("volumes-table", "data-1")
        ),
    );
    assert!(text.as_str().unwrap().contains("/dev/vdb"), "{text}");
    let r = vc.get(&format!("/volumes/{vid}"), &tok);
    assert_eq!(
        r.body["volume"]["attachments"][0]["server_id"],
        servers[0].as_str()
    );

    // Deleting it now is refused, and the page says why.
    click_in_row(&b, "volumes-table", "data-1", "delete");
    b.click("#volumes-table button.armed");
    let err = b.wait(
        "the delete refusal",
        "var e = document.querySelector('#content > .error'); return e && [e.getAttribute('data-status'), e.textContent]",
    );
    assert_eq!(err[0], "400", "{err}");
    assert!(err[1].as_str().unwrap().contains("in-use"), "{err}");

    // The server's page lists it.
    b.goto(&format!("/dashboard#/servers/{}", servers[0]));
    let text = b.wait(
        "the server's volumes",
        "var t = document.querySelector('#server-volumes-table'); return t && t.textContent.indexOf('data-1') >= 0 && t.textContent",
    );
    assert!(text.as_str().unwrap().contains("/dev/vdb"), "{text}");

    // Detach from the volumes page: available again.
    b.goto("/dashboard#/volumes");
    click_in_row(&b, "volumes-table", "data-1", "detach");
    b.wait(
        "data-1 available after detaching",
        &row_with("volumes-table", "data-1", "available"),
    );
    let r = vc.get(&format!("/volumes/{vid}"), &tok);
    assert_eq!(r.body["volume"]["attachments"], json!([]), "{}", r.body);

    // And again from the server's page: attach, then detach there.
    b.goto(&format!("/dashboard#/servers/{}", servers[0]));
    b.find("#server-volumes-table td.empty");
    b.click("#server-volume-attach");
    b.choose("#server-volume-select", "data-1");
    b.click("#server-volume-form button[type=submit]");
    b.wait(
        "data-1 in-use on the server's page",
        &row_with("server-volumes-table", "data-1", "in-use"),
    );
    b.click("#server-volumes-table button[data-action=detach]");
    b.find("#server-volumes-table td.empty");
    wait_status(&vc, &tok, &vid, "available");

    // Delete the snapshot, then both volumes.
    b.goto("/dashboard#/snapshots");
    click_in_row(&b, "snapshots-table", "snap-1", "delete");
    b.click("#snapshots-table button.armed");
    b.wait(
        "snap-1 gone",
        "var t = document.querySelector('#snapshots-table'); return t && t.textContent.indexOf('snap-1') < 0",
    );
    b.goto("/dashboard#/volumes");
    for name in ["data-1", "from-snap"] {
        click_in_row(&b, "volumes-table", name, "delete");
        b.click("#volumes-table button.armed");
        b.wait(
            &format!("{name} gone"),
            &format!("return {} === ''", row_text("volumes-table", name)),
        );
    }
    b.find("#volumes-table td.empty");
    assert_eq!(vc.get("/volumes", &tok).body["volumes"], json!([]));
    assert_eq!(vc.get("/snapshots", &tok).body["snapshots"], json!([]));
    assert_eq!(b.js("return window.stillTheSamePage === true"), true);
}

#[test]
fn dashboard_admin_pages_only_for_admins_and_generic_login_failure() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.project("plain");
    let r = c.server.client_at("/edge/v1").post(
        "/sites",
        &c.admin,
        serde_json::json!({"site": {"name": "edge-dash"}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let b = Browser::start(&c.server.url);

    // A wrong password and an unknown user get the same one message.
    b.goto("/dashboard");
    b.fill("#login-username", "plain-user");
    b.fill("#login-password", "wrong-password");
    b.click("#login-submit");
    let msg = b.wait(
        "the login error",
        "var e = document.querySelector('#login-error .error'); return e && e.textContent",
    );
    assert_eq!(msg, "Invalid credentials");
    b.goto("/dashboard");
    b.fill("#login-username", "nobody-at-all");
    b.fill("#login-password", "pw-12345");
    b.click("#login-submit");
    let msg = b.wait(
        "the login error",
        "var e = document.querySelector('#login-error .error'); return e && e.textContent",
    );
    assert_eq!(msg, "Invalid credentials");

    // A member: no admin section, and an admin page's URL shows the API's
    // refusal and no data.
    b.login("plain-user", "pw-12345", "plain");
    b.find("#content h1");
    assert_eq!(
        b.js("return document.querySelectorAll('#admin-nav, nav a[data-page^=admin]').length"),
        0
    );
    for page in ["hypervisors", "projects", "users", "sites", "volume-types"] {
        b.goto(&format!("/dashboard#/admin/{page}"));
        let err = b.wait(
            "the refusal",
            "var e = document.querySelector('#content .error'); return e && [e.getAttribute('data-status'), e.textContent]",
        );
        // The API's own 403 and message.
        assert_eq!(err[0], "403", "{page}: {err}");
        let msg = err[1].as_str().unwrap();
        assert!(
            msg.contains("not authorized") || msg.contains("Policy doesn't allow"),
            "{page}: {err}"
        );
        assert_eq!(
            b.js("return document.querySelectorAll('#content table').length"),
            0
        );
    }
    b.click("#logout");
    b.find("#login-form");

    // The admin sees them, with data.
    b.login("admin", &c.server.admin_password, "admin");
    b.find("#admin-nav");
    b.goto("/dashboard#/admin/hypervisors");
    b.wait(
        "a hypervisor row",
        "return document.querySelectorAll('#hypervisors-table tbody tr[data-id]').length",
    );
    b.goto("/dashboard#/admin/sites");
    let state = b.wait(
        "the site's row",
        "var r = document.querySelector('#sites-table tbody tr[data-id]'); return r && r.textContent",
    );
    let text = state.as_str().unwrap_or_default();
    assert!(
        text.contains("edge-dash") && text.contains("joining"),
        "{state}"
    );
    b.goto("/dashboard#/admin/projects");
    b.wait(
        "the plain project",
        &row_with("projects-table", "plain", "enabled"),
    );

    // Volume types: the default one, create and delete another.
    b.goto("/dashboard#/admin/volume-types");
    b.wait(
        "the default type",
        &format!(
            "return {}.length > 0",
            row_text("volume-types-table", "__DEFAULT__")
        ),
    );
    b.click("#content button[data-action=create]");
    b.fill("#volume-type-name", "fast-ssd");
    b.fill("#volume-type-description", "Local NVMe");
    b.fill("#volume-type-specs", "tier=gold");
    b.click("#volume-type-form button[type=submit]");
    let text = b.wait(
        "the new type",
        &format!("return {}", row_text("volume-types-table", "fast-ssd")),
    );
    assert!(text.as_str().unwrap().contains("tier = gold"), "{text}");
    let r = c
        .server
        .client_at("/volume/v3")
        .get("/types?is_public=None", &c.admin);
    assert!(r.body.to_string().contains("fast-ssd"), "{}", r.body);
    click_in_row(&b, "volume-types-table", "fast-ssd", "delete");
    b.click("#volume-types-table button.armed");
    b.wait(
        "the type gone",
        "var t = document.querySelector('#volume-types-table'); return t && t.textContent.indexOf('fast-ssd') < 0",
    );
}

/// The HTTP face of the dashboard: cookie, CSRF and proxy rules.
#[test]
fn dashboard_sessions_need_the_csrf_token() {
    let s = Server::start();
    let a = agent();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut r = a.get(format!("{}{path}", s.url));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.call().unwrap()
    };
    let post = |path: &str, headers: &[(&str, &str)], body: Value| {
        let mut r = a
            .post(format!("{}{path}", s.url))
            .header("Content-Type", "application/json");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send(body.to_string()).unwrap()
    };
    let cookie_of = |r: &ureq::http::Response<ureq::Body>, name: &str| -> (String, String) {
        let line = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} cookie"))
            .to_string();
        let value = line[name.len() + 1..]
            .split(';')
            .next()
            .unwrap()
            .to_string();
        (value, line)
    };

    // A browser at / is sent to the dashboard; API clients get the JSON.
    let r = get("/", &[("Accept", "text/html,application/xhtml+xml")]);
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/dashboard");
    let mut r = get("/", &[]);
    assert_eq!(r.status(), 200);
    let v: Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["name"], "stratus");
    let r = get("/dashboard", &[]);
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // The login form's CSRF pair.
    let mut r = get("/dashboard/session", &[]);
    assert_eq!(r.status(), 401);
    let (login_cookie, _) = cookie_of(&r, "stratus_login_csrf");
    let v: Value = r.body_mut().read_json().unwrap();
    let login_csrf = v["login_csrf"].as_str().unwrap().to_string();
    let jar = format!("stratus_login_csrf={login_cookie}");
    let creds = json!({"username": "admin", "password": s.admin_password, "project": "admin"});

    // A login post without the token, or with another, is refused even
    // with the right password.
    let r = post("/dashboard/login", &[("Cookie", &jar)], creds.clone());
    assert_eq!(r.status(), 403);
    let r = post(
        "/dashboard/login",
        &[("Cookie", &jar), ("X-CSRF-Token", "forged")],
        creds.clone(),
    );
    assert_eq!(r.status(), 403);
    let r = post(
        "/dashboard/login",
        &[("X-CSRF-Token", &login_csrf)],
        creds.clone(),
    );
    assert_eq!(r.status(), 403, "the token without its cookie");

    // A wrong password and an unknown user: the same answer.
    let login_h = [
        ("Cookie", jar.as_str()),
        ("X-CSRF-Token", login_csrf.as_str()),
    ];
    let mut msgs = vec![];
    for bad in [
        json!({"username": "admin", "password": "nope"}),
        json!({"username": "nobody", "password": "nope"}),
        json!({"username": "admin", "password": s.admin_password, "domain": "Elsewhere"}),
    ] {
        let mut r = post("/dashboard/login", &login_h, bad);
        assert_eq!(r.status(), 401);
        let v: Value = r.body_mut().read_json().unwrap();
        msgs.push(v["error"]["message"].clone());
    }
    assert!(msgs.iter().all(|m| m == "Invalid credentials"), "{msgs:?}");

    // The right one: a session cookie scripts cannot read.
    let mut r = post("/dashboard/login", &login_h, creds);
    assert_eq!(r.status(), 200);
    let (sid, line) = cookie_of(&r, "stratus_session");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(line.contains(attr), "{line}");
    }
    assert!(!line.contains("Secure"), "plain http: {line}");
    let v: Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["admin"], true);
    assert_eq!(v["project"]["name"], "admin");
    assert!(v.get("token").is_none(), "{v}");
    let csrf = v["csrf"].as_str().unwrap().to_string();
    let jar = format!("stratus_session={sid}");

    // The proxy: the session cookie and the CSRF token, or 403.
    let path = "/dashboard/api/compute/v2.1/os-hypervisors";
    assert_eq!(get(path, &[("Cookie", &jar)]).status(), 403);
    assert_eq!(
        get(path, &[("Cookie", &jar), ("X-CSRF-Token", "forged")]).status(),
        403
    );
    assert_eq!(get(path, &[("X-CSRF-Token", &csrf)]).status(), 401);
    let ok = [("Cookie", jar.as_str()), ("X-CSRF-Token", csrf.as_str())];
    let mut r = get(path, &ok);
    assert_eq!(r.status(), 200);
    let v: Value = r.body_mut().read_json().unwrap();
    assert!(v["hypervisors"].is_array(), "{v}");
    // API errors come through in the service's own shape.
    let mut r = get("/dashboard/api/compute/v2.1/servers/nope", &ok);
    assert_eq!(r.status(), 404);
    let v: Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["itemNotFound"]["code"], 404, "{v}");
    // The block storage API too (and the page's volumes script).
    let mut r = get("/dashboard/api/volume/v3/volumes/detail", &ok);
    assert_eq!(r.status(), 200);
    let v: Value = r.body_mut().read_json().unwrap();
    assert!(v["volumes"].is_array(), "{v}");
    let r = get("/dashboard/static/volumes.js", &[]);
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("content-security-policy"));
    // Only the OpenStack services (and the edge sites' admin API) are
    // reachable through it.
    assert_eq!(get("/dashboard/api/edge/v1/nodes", &ok).status(), 404);
    let mut r = get("/dashboard/api/edge/v1/sites", &ok);
    assert_eq!(r.status(), 200);
    let v: Value = r.body_mut().read_json().unwrap();
    assert!(v["sites"].is_array(), "{v}");
    assert_eq!(
        get("/dashboard/api/compute/%2e%2e/edge/v1/nodes", &ok).status(),
        400
    );
    // The path goes on as sent: a name with a space, percent-encoded.
    let r = post(
        "/dashboard/api/compute/v2.1/os-keypairs",
        &ok,
        json!({"keypair": {"name": "my key"}}),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(
        get("/dashboard/api/compute/v2.1/os-keypairs/my%20key", &ok).status(),
        200
    );
    let r = post(
        "/dashboard/api/compute/v2.1/os-keypairs",
        &[("Cookie", &jar)],
        json!({"keypair": {"name": "k"}}),
    );
    assert_eq!(r.status(), 403, "a write without the CSRF token");
    let r = post(
        "/dashboard/api/compute/v2.1/os-keypairs",
        &ok,
        json!({"keypair": {"name": "k"}}),
    );
    assert_eq!(r.status(), 200);

    // Logout needs the token too; afterwards the session is gone.
    assert_eq!(
        post("/dashboard/logout", &[("Cookie", &jar)], json!({})).status(),
        403
    );
    assert_eq!(post("/dashboard/logout", &ok, json!({})).status(), 204);
    assert_eq!(get(path, &ok).status(), 401);
    assert_eq!(get("/dashboard/session", &[("Cookie", &jar)]).status(), 401);
}

/// Logs in to the dashboard over HTTP with `form`: the status, the
/// session's Set-Cookie line and the JSON answer.
fn http_login(base: &str, form: Value) -> (u16, String, Value) {
    let a = agent();
    let mut r = a.get(format!("{base}/dashboard/session")).call().unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let v: Value = r.body_mut().read_json().unwrap();
    let mut r = a
        .post(format!("{base}/dashboard/login"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", v["login_csrf"].as_str().unwrap())
        .header("Content-Type", "application/json")
        .send(form.to_string())
        .unwrap();
    let line = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("stratus_session="))
        .unwrap_or_default()
        .to_string();
    let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
    (r.status().as_u16(), line, v)
}

#[test]
fn dashboard_switches_project_and_takes_application_credentials() {
    // Behind TLS (the public URL is https) the cookie is Secure.
    let s = Server::start_with(&["--public-url", "https://cloud.example"]);
    let c = s.client();
    let admin = c.token("admin", &s.admin_password, Some("admin"));
    let mut pids = vec![];
    for name in ["alpha", "beta"] {
        let p = c.create(&admin, "/projects", "project", json!({"name": name}));
        pids.push(p["id"].as_str().unwrap().to_string());
    }
    let uid = c.user(&admin, "dev", "dev-pw-1", Some((&pids[0], "member")));
    let rid = c.role_id(&admin, "member");
    let r = c.put(
        &format!("/projects/{}/users/{uid}/roles/{rid}", pids[1]),
        &admin,
    );
    assert_eq!(r.status, 204);

    // No project given: the first project the user has a role on.
    let (st, line, v) = http_login(&s.url, json!({"username": "dev", "password": "dev-pw-1"}));
    assert_eq!(st, 200, "{v}");
    assert!(line.contains("; Secure"), "{line}");
    assert_eq!(v["project"]["name"], "alpha");
    assert_eq!(v["admin"], false);
    let names: Vec<&str> = v["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    let jar = line.split(';').next().unwrap().to_string();
    let csrf = v["csrf"].as_str().unwrap().to_string();

    // Switch to beta: a new session on a rescoped token.
    let a = agent();
    let switch = |jar: &str, csrf: &str, pid: &str| {
        a.post(format!("{}/dashboard/project", s.url))
            .header("Cookie", jar)
            .header("X-CSRF-Token", csrf)
            .header("Content-Type", "application/json")
            .send(json!({"project_id": pid}).to_string())
            .unwrap()
    };
    assert_eq!(switch(&jar, "forged", &pids[1]).status(), 403);
    let mut r = switch(&jar, &csrf, &pids[1]);
    assert_eq!(r.status(), 200);
    let line = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let v: Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["project"]["id"], pids[1].as_str());
    let jar2 = line.split(';').next().unwrap().to_string();
    let csrf2 = v["csrf"].as_str().unwrap().to_string();
    let mut r = a
        .get(format!("{}/dashboard/api/identity/v3/auth/tokens", s.url))
        .header("Cookie", &jar2)
        .header("X-CSRF-Token", &csrf2)
        .call()
        .unwrap();
    // The proxy never hands a token to the page.
    assert!(r.headers().get("x-subject-token").is_none());
    let _ = r.body_mut().read_to_string();
    // The old session is over.
    let r = a
        .get(format!("{}/dashboard/session", s.url))
        .header("Cookie", &jar)
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
    // A project without a role: refused.
    let admin_pid = c.get("/auth/projects", &admin).body["projects"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(switch(&jar2, &csrf2, &admin_pid).status(), 403);

    // An application credential logs in to its own project.
    let dt = c.token("dev", "dev-pw-1", Some("beta"));
    let r = c.post(
        &format!("/users/{uid}/application_credentials"),
        &dt,
        json!({"application_credential": {"name": "dash"}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let ac = &r.body["application_credential"];
    let (st, _, v) = http_login(
        &s.url,
        json!({"application_credential_id": ac["id"], "application_credential_secret": ac["secret"]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["project"]["name"], "beta");
    assert_eq!(v["application_credential"], true);
    let (st, _, v) = http_login(
        &s.url,
        json!({"application_credential_id": ac["id"], "application_credential_secret": "wrong"}),
    );
    assert_eq!(st, 401);
    assert_eq!(v["error"]["message"], "Invalid credentials");
}
