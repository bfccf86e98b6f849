"""Summarise a Tempest run (a subunit v2 stream) per API area.

Used by scripts/conformance. Prints a Markdown summary: passed / failed /
skipped per area, the failing tests with their first error line, and the
skip reasons. With --must-pass FILE it exits non-zero unless every test the
file names ran and passed; with --write-must-pass FILE it pins the tests
that passed in this run.
"""

import argparse
import collections
import datetime
import re
import sys

import subunit
import testtools

AREAS = ("identity", "compute", "image", "network", "volume")


def read_results(path):
    results = {}

    def on_test(test):
        status = test["status"]
        if status in ("exists", "inprogress"):
            return
        results[test["id"]] = (status, test["details"])

    with open(path, "rb") as stream:
        case = subunit.ByteStreamToStreamResult(stream, non_subunit_name="stdout")
        sink = testtools.StreamToDict(on_test)
        sink.startTestRun()
        case.run(sink)
        sink.stopTestRun()
    return results


def detail_text(details, key):
    content = details.get(key)
    if content is None:
        return ""
    try:
        return b"".join(bytes(c) for c in content.iter_bytes()).decode("utf-8", "replace")
    except Exception:  # a detail we cannot read is not worth failing over
        return ""


def first_error_line(details):
    text = detail_text(details, "traceback")
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    # The exception line is the last line of a traceback that does not
    # start with whitespace; Tempest's messages often continue below it.
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[\w.]+(Error|Exception|Failure|Conflict|NotFound|"
                    r"BadRequest|Forbidden|Unauthorized|TimeoutException|"
                    r"Mismatch\w*|ServerFault|\w+)\b: ", lines[i]) and \
                not lines[i].startswith("File "):
            msg = lines[i]
            if i + 1 < len(lines) and len(msg) < 80:
                msg += " " + lines[i + 1]
            return msg[:300]
    return (lines[-1] if lines else "(no traceback)")[:300]


def bare_id(test_id):
    return test_id.split("[", 1)[0]


def area_of(test_id):
    m = re.match(r"^(?:setUpClass|tearDownClass) \((.*)\)$", test_id)
    name = m.group(1) if m else test_id
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "tempest" and parts[1] == "api":
        return parts[2]
    return "other"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("subunit")
    p.add_argument("--tempest-version", default="?")
    p.add_argument("--seconds", type=int, default=0)
    p.add_argument("--selected", help="every test id the run selected")
    p.add_argument("--must-pass")
    p.add_argument("--write-must-pass")
    a = p.parse_args()

    results = read_results(a.subunit)
    # A class skipped or failed in setUpClass reports once, as
    # "setUpClass (module.Class)"; count each of its tests instead.
    fixtures = {}
    for test_id, (status, details) in results.items():
        m = re.match(r"^setUpClass \((.*)\)$", test_id)
        if m and status in ("skip", "fail"):
            fixtures[m.group(1)] = (status, details)
    class_tests = collections.Counter()
    if a.selected:
        ran = {bare_id(t) for t in results}
        for line in open(a.selected):
            t = line.strip()
            if not t.startswith("tempest.") or bare_id(t) in ran:
                continue
            cls = bare_id(t).rsplit(".", 1)[0]
            if cls in fixtures:
                class_tests[cls] += 1
    counts = collections.defaultdict(collections.Counter)
    failures = []
    skips = collections.Counter()
    for test_id, (status, details) in sorted(results.items()):
        area = area_of(test_id)
        fixture = test_id.startswith(("setUpClass", "tearDownClass"))
        m = re.match(r"^setUpClass \((.*)\)$", test_id)
        weight = max(class_tests.get(m.group(1), 1), 1) if m else 1
        if status == "success":
            if not fixture:
                counts[area]["passed"] += 1
        elif status == "skip":
            counts[area]["skipped"] += weight
            reason = detail_text(details, "reason").strip() or "(no reason)"
            skips[(area, reason[:160])] += weight
        elif status in ("fail", "uxsuccess"):
            counts[area]["failed"] += weight
            failures.append((test_id, first_error_line(details)))
        elif status == "xfail":
            counts[area]["expected failure"] += 1

    out = []
    today = datetime.date.today().isoformat()
    out.append(f"Tempest {a.tempest_version}, measured {today}, "
               f"{a.seconds} s wall clock.\n")
    out.append("| Area | Passed | Failed | Skipped |")
    out.append("|---|---:|---:|---:|")
    total = collections.Counter()
    for area in sorted(counts, key=lambda x: (AREAS.index(x) if x in AREAS else 99, x)):
        c = counts[area]
        total.update(c)
        out.append(f"| {area} | {c['passed']} | {c['failed']} | {c['skipped']} |")
    out.append(f"| **total** | **{total['passed']}** | **{total['failed']}** | "
               f"**{total['skipped']}** |")
    out.append("")
    out.append("A class skipped or failed as a whole (`setUpClass`) counts "
               "each of its tests.\n")
    if failures:
        groups = collections.Counter(
            ".".join(bare_id(re.sub(r"^\w+ \((.*)\)$", r"\1", t)).split(".")[:-1])
            if not t.startswith(("setUpClass", "tearDownClass"))
            else re.sub(r"^\w+ \((.*)\)$", r"\1", t)
            for t, _ in failures)
        out.append("### Failures by test class\n")
        for cls, n in groups.most_common():
            out.append(f"- {n} `{cls}`")
        out.append("")
        out.append("### Failing tests (first error line)\n")
        for test_id, line in failures:
            out.append(f"- `{bare_id(test_id)}`: {line}")
        out.append("")
    if skips:
        out.append("### Skip reasons\n")
        for (area, reason), n in sorted(skips.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"- {area}, {n}: {reason}")
        out.append("")
    print("\n".join(out))

    if a.write_must_pass:
        passed = sorted(bare_id(t) for t, (s, _) in results.items()
                        if s == "success" and not t.startswith(("setUpClass", "tearDownClass")))
        with open(a.write_must_pass, "w") as f:
            f.write("# Tempest tests that pass against Stratus; .ci/run runs them\n"
                    "# (scripts/conformance --must-pass) and fails on any that does\n"
                    "# not pass. One regex per line. Regenerate with\n"
                    "# scripts/conformance --write-must-pass.\n")
            for t in passed:
                f.write("^" + re.escape(t) + r"\[" + "\n")
        print(f"pinned {len(passed)} passing tests in {a.write_must_pass}", file=sys.stderr)

    if a.must_pass:
        patterns = [l.strip() for l in open(a.must_pass)
                    if l.strip() and not l.startswith("#")]
        bad = []
        for pat in patterns:
            rx = re.compile(pat)
            hits = [(t, s) for t, (s, _) in results.items() if rx.search(t)]
            if not hits:
                bad.append(f"{pat}: did not run")
            bad.extend(f"{t}: {s}" for t, s in hits if s != "success")
        fixture_failures = [t for t, (s, _) in results.items()
                            if t.startswith(("setUpClass", "tearDownClass")) and s == "fail"]
        bad.extend(f"{t}: fail" for t in fixture_failures)
        if bad:
            print(f"must-pass: {len(bad)} of {len(patterns)} pinned tests did not pass:",
                  file=sys.stderr)
            for b in bad:
                print("  " + b, file=sys.stderr)
            sys.exit(1)
        print(f"must-pass: all {len(patterns)} pinned tests passed", file=sys.stderr)


if __name__ == "__main__":
    main()
