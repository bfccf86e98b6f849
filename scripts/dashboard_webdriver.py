"""A small WebDriver client for headless Chromium (the distribution's
chromium and chromium-driver packages) and a throwaway `stratus up`, shared
by scripts/dashboard-screenshots and scripts/bench-dashboard. Standard
library only."""

import base64, json, os, socket, subprocess, tempfile, time, urllib.error, urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(method, url, body=None, headers=None, raw=None, timeout=120):
    """(status, parsed JSON or text, headers)"""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            b = r.read()
            status, hdrs = r.status, r.headers
    except urllib.error.HTTPError as e:
        b, status, hdrs = e.read(), e.code, e.headers
    try:
        v = json.loads(b) if b else None
    except ValueError:
        v = b.decode(errors="replace")
    return status, v, hdrs


class Cloud:
    """`stratus up` on a temp dir and a free port; admin token and password."""

    def __init__(self, binary, extra, work=None):
        self.work = work or tempfile.mkdtemp(prefix="stratus-dash.")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = os.path.join(self.work, "data")
        self.log = open(os.path.join(self.work, "stratus.log"), "w")
        self.proc = subprocess.Popen([binary, "up", "--listen", f"127.0.0.1:{self.port}", "--data-dir", data,
                                      "--public-network", "none"] + extra,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        self.procs = [self.proc]
        for _ in range(600):
            try:
                urllib.request.urlopen(self.url + "/identity/v3", timeout=1)
                break
            except Exception:
                if self.proc.poll() is not None:
                    raise SystemExit(f"stratus up exited: see {self.log.name}")
                time.sleep(0.1)
        self.password = None
        for l in open(os.path.join(data, "clouds.yaml")):
            l = l.strip()
            if l.startswith("password:"):
                self.password = l.split(":", 1)[1].strip().strip('"')
        st, b, h = self.call("POST", "/identity/v3/auth/tokens", body={"auth": {"identity": {"methods": ["password"],
            "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": self.password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        assert st == 201, b
        self.token = h["X-Subject-Token"]
        self.project = b["token"]["project"]["id"]

    def call(self, method, path, body=None, headers=None, raw=None):
        hd = {"OpenStack-API-Version": "compute 2.38"}
        if getattr(self, "token", None):
            hd["X-Auth-Token"] = self.token
        hd.update(headers or {})
        return http(method, self.url + path, body, hd, raw)

    def image(self, name, data=b"\0" * 1024, disk="raw", container="bare"):
        st, b, _ = self.call("POST", "/image/v2/images", {"name": name, "disk_format": disk, "container_format": container})
        assert st == 201, b
        st, b, _ = self.call("PUT", f"/image/v2/images/{b['id']}/file", raw=data,
                             headers={"Content-Type": "application/octet-stream"})
        assert st == 204, b
        return self.call("GET", "/image/v2/images?name=" + name)[1]["images"][0]["id"]

    def stop(self):
        for p in reversed(self.procs):
            try:
                p.terminate()
                p.wait(timeout=20)
            except Exception:
                p.kill()


class Browser:
    """Headless Chromium under a chromedriver of our own."""

    def __init__(self, base, width=1280, height=860):
        self.base = base
        port = free_port()
        try:
            self.driver = subprocess.Popen(["chromedriver", f"--port={port}"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SystemExit("chromedriver is missing: apt-get install chromium chromium-driver")
        self.wd = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                st, v, _ = http("GET", self.wd + "/status", timeout=2)
                if st == 200 and v["value"]["ready"]:
                    break
            except Exception:
                pass
            time.sleep(0.1)
        self.profile = tempfile.mkdtemp(prefix="stratus-chrome.")
        v = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--window-size={width},{height}", f"--user-data-dir={self.profile}"]}}}})
        self.session = v["sessionId"]

    def _call(self, method, path, body=None):
        st, v, _ = http(method, self.wd + path, body)
        if st >= 400:
            raise RuntimeError(f"WebDriver {method} {path}: {st} {v}")
        return v["value"]

    def s(self, path):
        return f"/session/{self.session}{path}"

    def goto(self, path):
        self._call("POST", self.s("/url"), {"url": self.base + path if path.startswith("/") else path})

    def js(self, script):
        return self._call("POST", self.s("/execute/sync"), {"script": script, "args": []})

    def wait(self, what, script, timeout=60):
        end = time.monotonic() + timeout
        while True:
            v = self.js(script)
            if v:
                return v
            if time.monotonic() > end:
                raise SystemExit(f"waiting for {what}: never happened; the page shows:\n{self.js('return document.body.innerText')}")
            time.sleep(0.05)

    def find(self, css):
        self.wait(css, f"return document.querySelector({json.dumps(css)}) !== null")
        v = self._call("POST", self.s("/element"), {"using": "css selector", "value": css})
        return v["element-6066-11e4-a52e-4f735466cecf"]

    def click(self, css):
        self._call("POST", self.s(f"/element/{self.find(css)}/click"), {})

    def fill(self, css, text):
        e = self.find(css)
        self._call("POST", self.s(f"/element/{e}/clear"), {})
        self._call("POST", self.s(f"/element/{e}/value"), {"text": text})

    def login(self, user, password, project=""):
        self.goto("/dashboard")
        self.fill("#login-username", user)
        self.fill("#login-password", password)
        if project:
            self.fill("#login-project", project)
        self.click("#login-submit")
        self.find("#whoami")

    def screenshot(self, path):
        png = base64.b64decode(self._call("GET", self.s("/screenshot")))
        with open(path, "wb") as f:
            f.write(png)

    def close(self):
        try:
            self._call("DELETE", self.s(""))
        except Exception:
            pass
        self.driver.terminate()
        self.driver.wait()
