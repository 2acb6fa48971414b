#!/usr/bin/env node
// Lints deploy/grafana/lockstep.json offline:
//   - it is exactly what deploy/grafana/dashboard.js generates (no hand edits drift from the code);
//   - a Prometheus `datasource` variable and no `__inputs`; every panel and query uses ${datasource};
//   - panel ids unique, refIds unique per panel, grid inside 24 columns with no overlapping panels;
//   - every `$variable` in a query is a dashboard variable or a Grafana built-in;
//   - every lockstep_ metric a query names is in the metrics contract (tests/deploy/lockstep_metrics.json)
//     and every contract metric is on the dashboard;
//   - every query, variables substituted, parses as PromQL (`promtool check rules` on a rule file made
//     of one recording rule per query).
// Usage: node tests/deploy/dashboard_lint_test.js [--promtool PATH]
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawnSync } = require("child_process");

const root = path.resolve(__dirname, "../..");
const dashFile = path.join(root, "deploy/grafana/lockstep.json");
const promtoolArg = process.argv.indexOf("--promtool");
const promtool = promtoolArg >= 0 ? process.argv[promtoolArg + 1] : "promtool";

const failures = [];
let checks = 0;
function check(ok, msg) {
  checks++;
  if (!ok) failures.push(msg);
}

// --- generated from code ---------------------------------------------------------------------------
const gen = spawnSync(process.execPath, [path.join(root, "deploy/grafana/dashboard.js"), "--check", dashFile],
                      { encoding: "utf8" });
check(gen.status === 0, `dashboard.js --check: ${(gen.stderr || gen.stdout).trim()}`);

const d = JSON.parse(fs.readFileSync(dashFile, "utf8"));

// --- datasource and variables ----------------------------------------------------------------------
check(!("__inputs" in d), "the dashboard must not have __inputs (it uses a datasource variable)");
check(typeof d.uid === "string" && d.uid.length > 0 && d.uid.length <= 40, "uid must be set (≤ 40 chars)");
const vars = (d.templating && d.templating.list) || [];
const dsVar = vars.find((v) => v.name === "datasource");
check(dsVar && dsVar.type === "datasource" && dsVar.query === "prometheus",
      "a `datasource` variable of type datasource, query prometheus");
const DS = { type: "prometheus", uid: "${datasource}" };
const sameDs = (x) => x && x.type === DS.type && x.uid === DS.uid;
for (const v of vars) {
  if (v.type === "query") check(sameDs(v.datasource), `variable ${v.name}: datasource must be \${datasource}`);
}
const varNames = new Set(vars.map((v) => v.name));
const builtins = new Set(["__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"]);

// --- panels -----------------------------------------------------------------------------------------
const panels = [];
for (const p of d.panels || []) {
  panels.push(p);
  for (const c of p.panels || []) panels.push(c);  // collapsed rows
}
const ids = new Set();
const cells = new Map();
const exprs = [];
for (const p of panels) {
  check(Number.isInteger(p.id) && !ids.has(p.id), `panel "${p.title}": id ${p.id} missing or duplicated`);
  ids.add(p.id);
  const g = p.gridPos || {};
  check(g.x >= 0 && g.w > 0 && g.x + g.w <= 24 && g.y >= 0 && g.h > 0,
        `panel "${p.title}": gridPos ${JSON.stringify(g)} outside the 24-column grid`);
  for (let x = g.x; x < g.x + g.w; x++) {
    for (let y = g.y; y < g.y + g.h; y++) {
      const k = `${x},${y}`;
      if (cells.has(k)) check(false, `panel "${p.title}" overlaps "${cells.get(k)}" at ${k}`);
      cells.set(k, p.title);
    }
  }
  if (p.type === "row") continue;
  check(typeof p.title === "string" && p.title.length > 0, `panel ${p.id}: no title`);
  check(typeof p.description === "string" && p.description.length > 0, `panel "${p.title}": no description`);
  check(sameDs(p.datasource), `panel "${p.title}": datasource must be \${datasource}`);
  const targets = p.targets || [];
  check(targets.length > 0, `panel "${p.title}": no queries`);
  const refs = new Set();
  for (const t of targets) {
    check(t.refId && !refs.has(t.refId), `panel "${p.title}": refId ${t.refId} missing or duplicated`);
    refs.add(t.refId);
    check(!t.datasource || sameDs(t.datasource), `panel "${p.title}" ${t.refId}: datasource`);
    check(typeof t.expr === "string" && t.expr.trim().length > 0, `panel "${p.title}" ${t.refId}: empty expr`);
    exprs.push({ panel: p.title, refId: t.refId, expr: t.expr });
  }
}
check(exprs.length >= 20, `expected at least 20 queries, found ${exprs.length}`);

// --- variables used in queries ----------------------------------------------------------------------
for (const e of exprs) {
  for (const m of e.expr.matchAll(/\$\{?([A-Za-z_][A-Za-z0-9_]*)/g)) {
    check(varNames.has(m[1]) || builtins.has(m[1]),
          `panel "${e.panel}" ${e.refId}: unknown variable $${m[1]}`);
  }
}

// --- metric names against the contract --------------------------------------------------------------
const contract = JSON.parse(fs.readFileSync(path.join(__dirname, "lockstep_metrics.json"), "utf8")).metrics;
const byName = new Map(contract.map((m) => [m.name, m]));
const used = new Set();
for (const e of exprs) {
  for (const [name] of e.expr.matchAll(/\blockstep_[a-z0-9_]+/g)) {
    let base = name;
    const h = name.match(/^(.*)_(bucket|sum|count)$/);
    if (h && byName.has(h[1]) && byName.get(h[1]).type === "histogram") base = h[1];
    check(byName.has(base), `panel "${e.panel}" ${e.refId}: ${name} is not in the metrics contract`);
    if (byName.has(base)) {
      const m = byName.get(base);
      check(m.type !== "histogram" || base !== name,
            `panel "${e.panel}" ${e.refId}: histogram ${name} used without _bucket/_sum/_count`);
      used.add(base);
    }
  }
}
for (const m of contract) check(used.has(m.name), `no panel shows ${m.name}`);

// --- PromQL syntax with promtool ----------------------------------------------------------------------
function substitute(expr) {
  return expr
    .replace(/\$\{?__rate_interval\}?/g, "1m")
    .replace(/\$\{?__interval\}?/g, "15s")
    .replace(/\$\{?__range\}?/g, "30m")
    .replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, ".*");
}
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-dash-"));
const ruleFile = path.join(tmp, "dashboard-queries.yml");
const lines = ["groups:", "  - name: dashboard", "    rules:"];
exprs.forEach((e, i) => {
  lines.push(`      - record: lockstep_dashboard:query_${i}`);
  lines.push(`        expr: ${JSON.stringify(substitute(e.expr))}`);
});
fs.writeFileSync(ruleFile, lines.join("\n") + "\n");
const pt = spawnSync(promtool, ["check", "rules", ruleFile], { encoding: "utf8" });
if (pt.error) {
  check(false, `cannot run ${promtool}: ${pt.error.message} (Debian package prometheus)`);
} else {
  check(pt.status === 0, `promtool check rules on the dashboard's queries:\n${pt.stdout}${pt.stderr}`);
}
fs.rmSync(tmp, { recursive: true, force: true });

// --- report -------------------------------------------------------------------------------------------
for (const f of failures) console.error(`FAIL: ${f}`);
console.log(`dashboard lint: ${panels.length} panels, ${exprs.length} queries, ${used.size}/${contract.length} ` +
            `contract metrics; ${checks - failures.length} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
