#!/usr/bin/env node
// Validates the manifests `helm template` rendered from deploy/helm/lockstep:
//   - each object against its Kubernetes schema (npm kubernetes-models) or prometheus-operator schema
//     (npm @kubernetes-models/prometheus-operator); an object of any other kind fails;
//   - the chart's own contract: unique names within DNS limits, Services and the ServiceMonitor select
//     what exists and name ports that exist, volumes that are mounted exist, every container has named
//     grpc/metrics ports, startup/liveness/readiness probes and runs as non-root without privilege
//     escalation, the PrometheusRule holds deploy/prometheus/lockstep-rules.yml and the dashboard
//     ConfigMap holds deploy/grafana/lockstep.json;
//   - optional expectations of the test scenario (see --help).
// Usage: node validate_manifests.js RENDERED.yaml [--kinds Kind=N,...] [--gpu rollout=N,learner=N]
//        [--probes grpc|tcp] [--replicas N] [-- RENDERED2.yaml [options] ...]
// Several files may be given, separated by `--`, each with its own options (one Node start for all).
"use strict";

const fs = require("fs");
const path = require("path");
const util = require("util");
const { createRequire } = require("module");

const root = path.resolve(__dirname, "../..");
const toolsDir = path.join(root, "deploy/tools");
const requireTool = createRequire(path.join(toolsDir, "package.json"));
let YAML;
try {
  YAML = requireTool("yaml");
  requireTool.resolve("kubernetes-models/apps/v1");
  requireTool.resolve("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
} catch (e) {
  console.error(`validate_manifests: npm packages missing in ${toolsDir}/node_modules (${e.code || e.message}); ` +
                "run scripts/install-deploy-tools.sh");
  process.exit(2);
}

const argv = process.argv.slice(2);
if (!argv.length || argv.includes("--help")) {
  console.log("usage: validate_manifests.js RENDERED.yaml [--kinds Kind=N,...] [--gpu rollout=N,learner=N] " +
              "[--probes grpc|tcp] [--replicas N] [-- RENDERED2.yaml [options] ...]");
  process.exit(argv.length ? 0 : 2);
}
function pairs(s) {
  const m = {};
  for (const kv of (s || "").split(",").filter(Boolean)) {
    const [k, v] = kv.split("=");
    m[k] = Number(v);
  }
  return m;
}

function validateFile(args) {
  function opt(name) {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  }
  const failures = [];
  let checks = 0;
  function check(ok, msg) {
    checks++;
    if (!ok) failures.push(msg);
    return ok;
  }

  // --- parse ------------------------------------------------------------------------------------------
  const text = fs.readFileSync(args[0], "utf8");
  const docs = YAML.parseAllDocuments(text);
  const objects = [];
  for (const doc of docs) {
    if (doc.errors.length) {
      check(false, `YAML error: ${doc.errors.map((e) => e.message).join("; ")}`);
      continue;
    }
    const o = doc.toJS();
    if (o === null || o === undefined) continue;  // empty document (a disabled template)
    objects.push(o);
  }
  check(objects.length > 0, "no objects rendered");

  // --- schemas ----------------------------------------------------------------------------------------
  function modelFor(apiVersion, kind) {
    const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
    const candidates = group === "monitoring.coreos.com"
      ? [`@kubernetes-models/prometheus-operator/${group}/${version}`]
      : [group ? `kubernetes-models/${group}/${version}` : `kubernetes-models/${version}`];
    for (const mod of candidates) {
      try {
        const m = requireTool(mod);
        if (m[kind]) return m[kind];
      } catch (e) {
        if (e.code !== "MODULE_NOT_FOUND" && e.code !== "ERR_PACKAGE_PATH_NOT_EXPORTED") throw e;
      }
    }
    return null;
  }

  const DNS1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
  const seen = new Set();
  const kinds = {};
  for (const o of objects) {
    const id = `${o.kind}/${o.metadata && o.metadata.name}`;
    const Model = o.apiVersion && o.kind ? modelFor(o.apiVersion, o.kind) : null;
    if (check(Model, `${id}: no schema for apiVersion ${o.apiVersion} kind ${o.kind}`)) {
      try {
        new Model(o).validate();
        check(true);
      } catch (e) {
        check(false, `${id} (${o.apiVersion}) fails its schema: ${e.message}`);
      }
    }
    kinds[o.kind] = (kinds[o.kind] || 0) + 1;
    const name = o.metadata && o.metadata.name;
    check(typeof name === "string" && name.length <= 63 && DNS1123.test(name), `${id}: name not a DNS-1123 label`);
    const key = `${o.kind}/${o.metadata.namespace || ""}/${name}`;
    check(!seen.has(key), `${id}: rendered twice`);
    seen.add(key);
    const labels = o.metadata.labels || {};
    check(labels["app.kubernetes.io/instance"] && labels["app.kubernetes.io/name"], `${id}: standard labels missing`);
  }

  // --- workloads ----------------------------------------------------------------------------------------
  const workloads = objects.filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet");
  const services = objects.filter((o) => o.kind === "Service");
  const matches = (sel, labels) => Object.entries(sel || {}).every(([k, v]) => labels && labels[k] === v);
  const component = (o) => (o.metadata.labels || {})["app.kubernetes.io/component"];
  const probesWanted = opt("--probes");
  const gpuWanted = pairs(opt("--gpu"));

  for (const w of workloads) {
    const id = `${w.kind}/${w.metadata.name}`;
    const pod = w.spec.template;
    check(matches(w.spec.selector.matchLabels, pod.metadata.labels), `${id}: selector does not match its pods`);
    const ps = pod.spec;
    check(ps.securityContext && ps.securityContext.runAsNonRoot === true, `${id}: pod not runAsNonRoot`);
    const volumes = new Set((ps.volumes || []).map((v) => v.name));
    for (const t of (w.spec.volumeClaimTemplates || [])) volumes.add(t.metadata.name);
    for (const c of ps.containers) {
      const cid = `${id} container ${c.name}`;
      const ports = new Set((c.ports || []).map((p) => p.name));
      check(ports.has("grpc") && ports.has("metrics"), `${cid}: needs ports named grpc and metrics`);
      for (const p of ["startupProbe", "livenessProbe", "readinessProbe"]) {
        check(c[p], `${cid}: no ${p}`);
        if (c[p] && probesWanted === "grpc") {
          check(c[p].grpc && Number.isInteger(c[p].grpc.port), `${cid}: ${p} is not a native gRPC probe`);
        }
        if (c[p] && probesWanted === "tcp") check(c[p].tcpSocket, `${cid}: ${p} is not a TCP probe`);
      }
      if (c.readinessProbe && c.readinessProbe.grpc) {
        check(/^lockstep\.v1\.(Rollout|Learner)Service$/.test(c.readinessProbe.grpc.service),
              `${cid}: readiness must check the service's own health status`);
      }
      if (c.startupProbe) {
        const s = c.startupProbe;
        check((s.periodSeconds || 10) * (s.failureThreshold || 3) >= 300,
              `${cid}: startup probe allows under 5 minutes for loading weights`);
      }
      const sc = c.securityContext || {};
      check(sc.allowPrivilegeEscalation === false, `${cid}: allowPrivilegeEscalation must be false`);
      const argv = c.args || [];
      for (const f of ["--port=", "--metrics_port=", "--model_dir=", "--device=", "--kernels="]) {
        check(argv.some((a) => a.startsWith(f)), `${cid}: no ${f} flag`);
      }
      for (const p of c.ports || []) {
        const flag = p.name === "grpc" ? "--port=" : "--metrics_port=";
        check(argv.includes(`${flag}${p.containerPort}`), `${cid}: port ${p.name} ${p.containerPort} != ${flag}`);
      }
      for (const m of c.volumeMounts || []) check(volumes.has(m.name), `${cid}: mounts unknown volume ${m.name}`);
      if (argv.includes("--device=cuda")) {
        check(c.resources && c.resources.limits && Object.keys(c.resources.limits).some((k) => /gpu/.test(k)),
              `${cid}: --device=cuda without a GPU limit`);
      }
      const comp = component(w);
      if (comp in gpuWanted) {
        const lim = (c.resources && c.resources.limits) || {};
        check(Number(lim["nvidia.com/gpu"] || 0) === gpuWanted[comp],
              `${cid}: nvidia.com/gpu limit ${lim["nvidia.com/gpu"]} != ${gpuWanted[comp]}`);
        if (comp === "rollout" && gpuWanted[comp] > 0) {
          check(argv.includes(`--tp=${gpuWanted[comp]}`), `${cid}: GPUs per pod must equal --tp`);
          if (gpuWanted[comp] > 1) {
            check(argv.includes("--tp_backend=nccl"), `${cid}: ${gpuWanted[comp]} GPUs but the ranks do not use them (--tp_backend=nccl)`);
          }
        }
        if (gpuWanted[comp] > 0) {
          const shm = (c.volumeMounts || []).find((m) => m.mountPath === "/dev/shm");
          const vol = shm && (ps.volumes || []).find((v) => v.name === shm.name);
          check(vol && vol.emptyDir && vol.emptyDir.medium === "Memory", `${cid}: no memory-backed /dev/shm`);
        }
      }
      // The learner must point at rollouts that exist in this release, when it points into it.
      for (const a of argv.filter((x) => x.startsWith("--rollout=") || x.startsWith("--rollout_dns="))) {
        const host = a.slice(a.indexOf("=") + 1).split(":")[0].split(".")[0];
        const own = services.find((s) => s.metadata.name === host);
        if (host.startsWith(w.metadata.name.replace(/-learner$/, ""))) {
          check(own, `${cid}: ${a} names no Service of this release`);
        }
      }
    }
    if (w.kind === "StatefulSet") {
      check(services.some((s) => s.metadata.name === w.spec.serviceName && s.spec.clusterIP === "None"),
            `${id}: serviceName ${w.spec.serviceName} is not a headless Service`);
    }
    if (opt("--replicas") && component(w) === "rollout") {
      check(w.spec.replicas === Number(opt("--replicas")), `${id}: replicas ${w.spec.replicas}`);
    }
  }

  // --- services -------------------------------------------------------------------------------------------
  for (const s of services) {
    const id = `Service/${s.metadata.name}`;
    const targets = workloads.filter((w) => matches(s.spec.selector, w.spec.template.metadata.labels));
    check(targets.length === 1, `${id}: selects ${targets.length} workloads, want 1`);
    for (const p of s.spec.ports) {
      check(["grpc", "metrics"].includes(p.name), `${id}: port ${p.name} must be named grpc or metrics`);
      for (const w of targets) {
        const names = w.spec.template.spec.containers.flatMap((c) => (c.ports || []).map((x) => x.name));
        check(names.includes(p.targetPort), `${id}: targetPort ${p.targetPort} not a container port`);
      }
    }
  }
  const rolloutWl = workloads.find((w) => component(w) === "rollout");
  if (rolloutWl) {
    check(rolloutWl.kind === "Deployment", "the rollout must be a Deployment");
  }
  const learnerWl = workloads.find((w) => component(w) === "learner");
  if (learnerWl) check(learnerWl.kind === "StatefulSet", "the learner must be a StatefulSet");

  // The learner reaches rollouts that serve TLS: it dials them with TLS, presents a client certificate to
  // rollouts that require one, and every certificate file it is given lies in one of its mounts.
  if (learnerWl) {
    const lc = learnerWl.spec.template.spec.containers[0];
    const largs = lc.args || [];
    const flag = (args, f) => args.find((a) => a === f || a.startsWith(`${f}=`));
    const rargs = rolloutWl ? rolloutWl.spec.template.spec.containers[0].args || [] : [];
    if (flag(rargs, "--tls_cert")) {
      check(flag(largs, "--rollout_tls") || flag(largs, "--rollout_tls_ca"),
            "the rollouts serve TLS but the learner dials them without --rollout_tls / --rollout_tls_ca");
    }
    if (flag(rargs, "--tls_ca")) {
      check(flag(largs, "--rollout_tls_cert") && flag(largs, "--rollout_tls_key"),
            "the rollouts require client certificates but the learner has no --rollout_tls_cert/--rollout_tls_key");
    }
    const mounts = (lc.volumeMounts || []).map((m) => m.mountPath);
    for (const f of ["--rollout_tls_ca", "--rollout_tls_cert", "--rollout_tls_key"]) {
      const a = largs.find((x) => x.startsWith(`${f}=`));
      if (a) {
        const file = a.slice(f.length + 1);
        check(mounts.some((m) => file.startsWith(`${m}/`)), `learner: ${a} is in no volume mount`);
      }
    }
  }

  // --- monitoring -------------------------------------------------------------------------------------
  for (const sm of objects.filter((o) => o.kind === "ServiceMonitor")) {
    const id = `ServiceMonitor/${sm.metadata.name}`;
    const sel = sm.spec.selector.matchLabels;
    const selected = services.filter((s) => matches(sel, s.metadata.labels));
    const comps = new Set(selected.map(component));
    check(comps.has("rollout") || !rolloutWl, `${id}: does not select the rollout Service`);
    check(comps.has("learner") || !learnerWl, `${id}: does not select the learner Service`);
    check(selected.length === comps.size, `${id}: selects ${selected.length} Services (headless ones twice?)`);
    for (const e of sm.spec.endpoints) {
      for (const s of selected) {
        check(s.spec.ports.some((p) => p.name === e.port), `${id}: port ${e.port} missing on ${s.metadata.name}`);
      }
    }
  }

  function readYaml(p) {
    return YAML.parse(fs.readFileSync(path.join(root, p), "utf8"));
  }
  for (const pr of objects.filter((o) => o.kind === "PrometheusRule")) {
    const want = readYaml("deploy/prometheus/lockstep-rules.yml").groups;
    const got = pr.spec.groups.slice(0, want.length);
    check(util.isDeepStrictEqual(got, want),
          `PrometheusRule/${pr.metadata.name}: groups differ from deploy/prometheus/lockstep-rules.yml`);
    const alerts = pr.spec.groups.flatMap((g) => g.rules.map((r) => r.alert)).filter(Boolean);
    for (const a of ["LockstepLogprobMismatch", "LockstepWeightPushFailures", "LockstepRolloutWeightVersionLag"]) {
      check(alerts.includes(a), `PrometheusRule/${pr.metadata.name}: alert ${a} missing`);
    }
  }

  for (const cm of objects.filter((o) => o.kind === "ConfigMap" && (o.metadata.labels || {}).grafana_dashboard)) {
    const id = `ConfigMap/${cm.metadata.name}`;
    const want = JSON.parse(fs.readFileSync(path.join(root, "deploy/grafana/lockstep.json"), "utf8"));
    const keys = Object.keys(cm.data || {});
    check(keys.length === 1 && keys[0].endsWith(".json"), `${id}: want one *.json key, got ${keys}`);
    let got;
    try {
      got = JSON.parse(cm.data[keys[0]]);
    } catch (e) {
      check(false, `${id}: dashboard JSON does not parse: ${e.message}`);
    }
    if (got) check(util.isDeepStrictEqual(got, want), `${id}: differs from deploy/grafana/lockstep.json`);
  }

  // --- scenario expectations ---------------------------------------------------------------------------
  const wantKinds = pairs(opt("--kinds"));
  if (opt("--kinds")) {
    const all = new Set([...Object.keys(wantKinds), ...Object.keys(kinds)]);
    for (const k of all) {
      check((kinds[k] || 0) === (wantKinds[k] || 0), `want ${wantKinds[k] || 0} ${k}, rendered ${kinds[k] || 0}`);
    }
  }

  // --- report -------------------------------------------------------------------------------------------
  const summary = Object.entries(kinds).sort().map(([k, n]) => `${n} ${k}`).join(", ");
  return { failures, line: `${path.basename(args[0])}: ${objects.length} objects (${summary}); ` +
                           `${checks - failures.length} checks passed, ${failures.length} failed` };
}

const groups = [[]];
for (const a of argv) {
  if (a === "--") groups.push([]);
  else groups[groups.length - 1].push(a);
}
let bad = 0;
for (const g of groups.filter((x) => x.length)) {
  const r = validateFile(g);
  for (const f of r.failures) console.error(`FAIL: ${path.basename(g[0])}: ${f}`);
  console.log(r.line);
  if (r.failures.length) bad++;
}
process.exit(bad ? 1 : 0);
