#!/usr/bin/env bash
# Static checks of observability/ (Prometheus config and alert rules, the Grafana dashboard and
# its provisioning) against each other, docker-compose.yml and the Rust sources. Needs no Docker
# engine and no running service. scripts/check-infra.sh runs it in CI.
#
#   promtool:  check config (prometheus.yml, with its rule files), check rules (alerts.yml),
#              test rules (alerts.test.yml: every alert fires on a synthetic series and stays
#              silent on a healthy one), and every dashboard expression parses as PromQL
#   dashboard: the JSON Grafana needs (schemaVersion, unique panel ids, gridPos, targets with
#              expr, the datasource uid of the provisioned Prometheus), the provisioning's path
#              is where docker-compose.yml mounts the dashboards
#   scrape:    prometheus.yml scrapes every instance docker-compose.yml builds from the Dockerfile
#   drift:     every metric name in the dashboard and the alert rules is exported by the Rust
#              sources (a string literal in services/ or crates/), or comes from RabbitMQ or
#              Prometheus itself, or is in observability/README.md's list of metrics still to add;
#              label matchers use labels those metrics have. Renaming a metric fails this.
#
# promtool: the one on PATH (or $PROMTOOL) when it is 3.x; else the Debian package `promtool`
# from Debian unstable (bookworm's is 2.42, too old for http_headers), fetched with apt-get
# download through the machine's own Debian mirror into the tool cache, without root and
# without touching the system's apt state. When none can be had: `SKIP: promtool not available:
# <reason>`, and the other checks still run.
#
# Prints one PASS:/FAIL:/SKIP: line per check (the output of a failed one above it); exits
# non-zero when a check fails.
#
# Environment:
#   SHOP_INFRA_TOOLS   tool cache (default: $HOME/.cache/shop-infra-tools)
#   PROMTOOL           a promtool 3.x to use
#   PROMTOOL_DEBIAN_SUITE      Debian suite to take promtool from (default: unstable)
#   CHECK_INFRA_NO_INSTALL=1   never download, only use what is there
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${SHOP_INFRA_TOOLS:-${HOME:-/root}/.cache/shop-infra-tools}"
PYYAML_VERSION="6.0.3"   # PyPI PyYAML, for reading the YAML files
DEBIAN_SUITE="${PROMTOOL_DEBIAN_SUITE:-unstable}"
OBS="observability"

FAILED=0
WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-observability.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

log() { printf '%s\n' "$*"; }
pass() { log "PASS: $1"; }
fail() { FAILED=$((FAILED + 1)); log "FAIL: $1"; }
skip() { log "SKIP: $1 not available: $2"; }

# check NAME CMD...: run a check; show its output only when it fails (or VERBOSE=1).
check() {
  local name="$1"
  shift
  local out="$WORK/out.txt"
  if timeout 300 "$@" >"$out" 2>&1; then
    if [[ "${VERBOSE:-0}" == 1 ]]; then
      sed 's/^/    /' "$out"
    else
      grep '^note: ' "$out" | sed 's/^/    /'
    fi
    pass "$name"
  else
    sed 's/^/    /' "$out" | tail -n 80
    fail "$name"
  fi
}

# promtool_major PATH: the major version of a promtool binary (empty if it does not run).
promtool_major() {
  "$1" --version 2>/dev/null | sed -n 's/^promtool, version \([0-9]*\)\..*/\1/p' | head -n 1
}

# The machine's Debian archive, as its own apt configuration names it.
debian_mirror() {
  local codename
  codename="$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")"
  [[ -n "$codename" ]] || return 1
  # shellcheck disable=SC2016 # $(...) here is apt's format syntax, not the shell's
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' 2>/dev/null |
    awk -v c="$codename" '$2 == c && $3 == "deb" { print $1; exit }'
}

# fetch_promtool DIR: unpack the newest promtool of $DEBIAN_SUITE into DIR. On failure, the
# reason is the last line of DIR.log.
fetch_promtool() {
  local dir="$1" log="$1.log" mirror keyring="/usr/share/keyrings/debian-archive-keyring.gpg"
  : >"$log"
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "no apt-get/dpkg-deb on this machine" >>"$log"
    return 1
  fi
  if ! mirror="$(debian_mirror)" || [[ -z "$mirror" ]]; then
    echo "no Debian archive in this machine's apt sources" >>"$log"
    return 1
  fi
  rm -rf "$dir" "$dir.apt"
  mkdir -p "$dir.apt/lists/partial" "$dir.apt/cache/archives/partial" "$dir.apt/parts" "$dir.apt/deb"
  local signed=""
  [[ -r "$keyring" ]] && signed="[signed-by=$keyring] "
  printf 'deb %s%s %s main\n' "$signed" "$mirror" "$DEBIAN_SUITE" >"$dir.apt/sources.list"
  # A private apt state: no root needed, the system's lists and configuration stay untouched.
  local apt=(-o "Dir::Etc::SourceList=$dir.apt/sources.list" -o "Dir::Etc::SourceParts=$dir.apt/parts"
    -o "Dir::Etc::Parts=$dir.apt/parts" -o "Dir::State::Lists=$dir.apt/lists"
    -o "Dir::Cache=$dir.apt/cache" -o "Debug::NoLocking=1" -o "Acquire::Languages=none"
    -o "APT::Sandbox::User=$(id -un)")
  if ! timeout 300 apt-get "${apt[@]}" -q update >>"$log" 2>&1; then
    echo "apt-get update of Debian $DEBIAN_SUITE failed" >>"$log"
    return 1
  fi
  if ! (cd "$dir.apt/deb" && timeout 300 apt-get "${apt[@]}" -q download promtool) >>"$log" 2>&1; then
    echo "apt-get download promtool (Debian $DEBIAN_SUITE) failed" >>"$log"
    return 1
  fi
  local deb
  deb="$(find "$dir.apt/deb" -name 'promtool_*.deb' | head -n 1)"
  if [[ -z "$deb" ]] || ! dpkg-deb -x "$deb" "$dir" >>"$log" 2>&1; then
    echo "could not unpack the promtool package" >>"$log"
    return 1
  fi
  basename "$deb" >"$dir/.package"
  rm -rf "$dir.apt"
}

# find_promtool: print the path of a promtool 3.x; on failure print the reason, return 1.
find_promtool() {
  local candidate major
  for candidate in "${PROMTOOL:-}" "$(command -v promtool 2>/dev/null)"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    major="$(promtool_major "$candidate")"
    if [[ -n "$major" && "$major" -ge 3 ]]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  local dir="$TOOLS/promtool-debian-$DEBIAN_SUITE" bin
  bin="$dir/usr/bin/promtool"
  if [[ -f "$dir/.installed" && -x "$bin" ]]; then
    printf '%s\n' "$bin"
    return 0
  fi
  if [[ "${CHECK_INFRA_NO_INSTALL:-0}" == 1 ]]; then
    echo "no promtool 3.x on PATH, none in $dir, and CHECK_INFRA_NO_INSTALL=1"
    return 1
  fi
  mkdir -p "$TOOLS"
  if ! fetch_promtool "$dir"; then
    tail -n 1 "$dir.log" | cut -c1-200
    rm -rf "$dir" "$dir.apt"
    return 1
  fi
  major="$(promtool_major "$bin")"
  if [[ -z "$major" || "$major" -lt 3 ]]; then
    echo "Debian $DEBIAN_SUITE's promtool ($(cat "$dir/.package")) is not 3.x or does not run here"
    rm -rf "$dir"
    return 1
  fi
  touch "$dir/.installed"
  rm -f "$dir.log"
  printf '%s\n' "$bin"
}

# find_python_yaml: print a python3 that can import yaml (a pinned PyYAML in the tool cache,
# else the system's); on failure print the reason, return 1.
find_python_yaml() {
  local venv="$TOOLS/pyyaml-$PYYAML_VERSION"
  if [[ -f "$venv/.installed" ]]; then
    printf '%s\n' "$venv/bin/python"
    return 0
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found"
    return 1
  fi
  if [[ "${CHECK_INFRA_NO_INSTALL:-0}" != 1 ]]; then
    mkdir -p "$TOOLS"
    rm -rf "$venv"
    if python3 -m venv "$venv" >"$WORK/pip.log" 2>&1 &&
      timeout 300 "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
        --retries 2 --timeout 30 "PyYAML==$PYYAML_VERSION" >>"$WORK/pip.log" 2>&1; then
      touch "$venv/.installed"
      printf '%s\n' "$venv/bin/python"
      return 0
    fi
    rm -rf "$venv"
  fi
  if python3 -c 'import yaml' >/dev/null 2>&1; then
    command -v python3
    return 0
  fi
  echo "pip install PyYAML==$PYYAML_VERSION failed: $(tail -n 1 "$WORK/pip.log" 2>/dev/null | cut -c1-150)"
  return 1
}

cd "$ROOT" || exit 2

############################################################################
# The Python checks: dashboard, provisioning, scrape targets, metric drift
############################################################################
PY_CHECKS="$WORK/checks.py"
cat >"$PY_CHECKS" <<'PY'
import json, pathlib, re, sys
import yaml

root = pathlib.Path(sys.argv[1])
what = sys.argv[2]
obs = root / "observability"
errors = []

def load_yaml(path):
    return yaml.safe_load((root / path).read_text())

dash_path = obs / "grafana/dashboards/shop.json"
alerts_path = obs / "prometheus/alerts.yml"

def panels_of(dash):
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:  # panels inside a collapsed row
            yield q

# Grafana's variables, replaced so that promtool can parse the expression.
def substitute(expr):
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]", ".*", expr)
    return expr

def dashboard_exprs(dash):
    for p in panels_of(dash):
        for t in p.get("targets", []) or []:
            if "expr" in t:
                yield p, t
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q or "")
        if m:
            yield {"id": f"variable {v.get('name')}", "title": ""}, {"expr": m.group(1), "refId": "var"}

def alert_exprs():
    for g in load_yaml(alerts_path)["groups"]:
        for r in g["rules"]:
            yield r.get("alert") or r.get("record"), r["expr"]

# --- the dashboard's expressions as recording rules, for promtool check rules -----------------
if what == "dashboard-rules":
    dash = json.loads(dash_path.read_text())
    rules = []
    for p, t in dashboard_exprs(dash):
        pid = re.sub(r"\W", "_", str(p.get("id")))
        rules.append({"record": f"dashboard:panel_{pid}:{t.get('refId', 'x')}", "expr": substitute(t["expr"])})
    print(yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, sort_keys=False))
    sys.exit(0)

# --- the dashboard's structure --------------------------------------------------------------
if what == "dashboard":
    try:
        dash = json.loads(dash_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{dash_path}: {e}")
    ds = load_yaml("observability/grafana/provisioning/datasources/datasources.yml")
    prom_uids = {d.get("uid") for d in ds.get("datasources", []) if d.get("type") == "prometheus"}
    if len(prom_uids) != 1 or None in prom_uids:
        errors.append(f"datasources.yml must provision exactly one Prometheus with a uid: {prom_uids}")
    uid = next(iter(prom_uids), None)
    for key, kind in [("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)]:
        if not isinstance(dash.get(key), kind):
            errors.append(f"dashboard: {key} missing or not a {kind.__name__}")
    ids = {}
    for p in panels_of(dash):
        pid, title = p.get("id"), p.get("title", "?")
        if not isinstance(pid, int):
            errors.append(f"panel {title!r}: id must be an integer")
        elif pid in ids:
            errors.append(f"panel {title!r}: id {pid} already used by {ids[pid]!r}")
        else:
            ids[pid] = title
        gp = p.get("gridPos") or {}
        if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp.get("x", 0) + gp.get("w", 0) > 24:
            errors.append(f"panel {title!r}: gridPos needs integer h, w, x, y within 24 columns: {gp}")
        if p.get("type") == "row":
            continue
        if not p.get("type") or not p.get("title"):
            errors.append(f"panel {pid}: type and title required")
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"panel {title!r}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            errors.append(f"panel {title!r}: refIds must be present and distinct: {refs}")
        for t in targets:
            if not (t.get("expr") or "").strip():
                errors.append(f"panel {title!r} target {t.get('refId')}: no expr")
        for where, d in [("panel", p.get("datasource"))] + [(f"target {t.get('refId')}", t.get("datasource")) for t in targets]:
            if not isinstance(d, dict) or d.get("type") != "prometheus" or d.get("uid") != uid:
                errors.append(f"panel {title!r} {where}: datasource must be {{type: prometheus, uid: {uid}}}, not {d}")
    for v in dash.get("templating", {}).get("list", []):
        d = v.get("datasource")
        if v.get("type") == "query" and (not isinstance(d, dict) or d.get("uid") != uid):
            errors.append(f"variable {v.get('name')}: datasource uid must be {uid}, not {d}")
    # The provisioning reads the folder docker-compose.yml mounts the dashboards into.
    prov = load_yaml("observability/grafana/provisioning/dashboards/shop.yml")
    paths = [pr.get("options", {}).get("path") for pr in prov.get("providers", [])]
    compose = load_yaml("docker-compose.yml")
    mounts = {}
    for vol in compose["services"].get("grafana", {}).get("volumes", []):
        if isinstance(vol, str) and ":" in vol:
            src, dst = vol.split(":")[:2]
            mounts[dst] = src
    for path in paths:
        if pathlib.PurePosixPath(mounts.get(path, "")) != pathlib.PurePosixPath("./observability/grafana/dashboards"):
            errors.append(f"dashboard provider path {path} is not where docker-compose.yml mounts ./observability/grafana/dashboards ({mounts})")
    if mounts.get("/etc/grafana/provisioning") != "./observability/grafana/provisioning":
        errors.append("docker-compose.yml must mount ./observability/grafana/provisioning at /etc/grafana/provisioning")
    print(f"{len(ids)} panels, datasource uid {uid}")

# --- prometheus.yml scrapes every instance of docker-compose.yml -----------------------------
if what == "scrape":
    compose = load_yaml("docker-compose.yml")
    prom = load_yaml("observability/prometheus/prometheus.yml")
    scraped = {}
    for job in prom.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                scraped[t] = job
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if not build:
            continue
        port = str((build.get("args") or {}).get("PORT", ""))
        target = f"{name}:{port}"
        job = scraped.get(target)
        if not job:
            errors.append(f"compose service {name} (port {port}) is not scraped: add {target} to prometheus.yml")
            continue
        if job.get("metrics_path", "/metrics") != "/metrics":
            errors.append(f"{target}: metrics_path must be /metrics")
        key = (job.get("http_headers") or {}).get("X-API-Key") or {}
        if not key.get("files"):
            errors.append(f"{target} (job {job['job_name']}): X-API-Key must come from a file (http_headers files:)")
        for f in key.get("files", []):
            secret = pathlib.PurePosixPath(f).name
            if f != f"/run/secrets/{secret}" or secret not in (s if isinstance(s, str) else s.get("source") for s in compose["services"].get("prometheus", {}).get("secrets", [])):
                errors.append(f"{target}: key file {f} is not a compose secret of the prometheus service")
    for t in scraped:
        host = t.split(":")[0]
        if host not in compose["services"] and host != "localhost":
            errors.append(f"prometheus.yml scrapes {t}, which is no compose service")
    print(f"{len(scraped)} targets scraped")

# --- metric drift ---------------------------------------------------------------------------
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "offset", "bool", "atan2", "inf", "nan", "start", "end",
}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")

def selectors(expr):
    """(metric name, set of label names matched) for every vector selector in a PromQL expr."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "5m", e)
    e = re.sub(r"\[[^\]]*\]", "[]", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1()", e)
    out = []
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?", e):
        word, matchers = m.group(1), m.group(2)
        nxt = e[m.end():].lstrip()
        if word in PROMQL_WORDS and not matchers:
            continue
        if nxt.startswith("(") and not matchers:
            continue  # a function or an aggregation
        if m.start() > 0 and e[m.start() - 1].isdigit():
            continue  # a duration or an exponent
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))
        out.append((word, labels))
    return out

def readme_table(section):
    """The metric rows (name -> labels) of a README section's table: | `name` | type | labels | ..."""
    text = (obs / "README.md").read_text()
    m = re.search(rf"^## {re.escape(section)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        errors.append(f"observability/README.md has no section '## {section}'")
        return {}
    rows = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[a-z_:][a-z0-9_:]*`", cells[0]):
            rows[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[2]))
    return rows

if what == "drift":
    # Every string literal of the Rust sources: a metric is exported when its name is in one.
    literals = []
    for src in list(root.glob("services/**/*.rs")) + list(root.glob("crates/**/*.rs")):
        literals += re.findall(r'"((?:[^"\\]|\\.)*)"', src.read_text(errors="replace"))
    rust_text = "\n".join(literals)
    def in_rust(name):
        return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", rust_text) is not None
    to_add = readme_table("Metrics the dashboard expects that the services do not export yet")
    rabbit = readme_table("Metrics from RabbitMQ")
    builtin = {"up": set(), "scrape_duration_seconds": set(), "scrape_samples_scraped": set()}
    # The labels every exported series has: the scrape's, the request metrics' and histograms'.
    scrape_labels = {"job", "instance"}
    rust_labels = {"route", "method", "status", "le"}
    uses = [(f"dashboard panel {p.get('id')} ({p.get('title')}) {t.get('refId')}", t["expr"]) for p, t in dashboard_exprs(json.loads(dash_path.read_text()))]
    uses += [(f"alert {name}", expr) for name, expr in alert_exprs()]
    seen, exported, pending = set(), set(), set()
    for where, expr in uses:
        for name, labels in selectors(expr):
            base = name
            for suffix in HIST_SUFFIXES:
                if name.endswith(suffix) and not in_rust(name) and (in_rust(name[: -len(suffix)]) or name[: -len(suffix)] in to_add):
                    base = name[: -len(suffix)]
            seen.add(base)
            if base in to_add:
                allowed = to_add[base] | scrape_labels | {"le"}
                if in_rust(base):
                    exported.add(base)
                else:
                    pending.add(base)
            elif base in rabbit:
                allowed = rabbit[base] | scrape_labels
            elif base in builtin:
                allowed = scrape_labels
            elif in_rust(base):
                allowed = scrape_labels | rust_labels
            else:
                errors.append(f"{where}: metric {name} is neither exported by services/ or crates/, nor from RabbitMQ, nor listed in observability/README.md as to be added")
                continue
            for label in sorted(labels - allowed):
                errors.append(f"{where}: {name} has no label {label} (it has {sorted(allowed)})")
    for name in sorted(set(to_add) - seen):
        errors.append(f"observability/README.md lists {name} as expected by the dashboard, but neither the dashboard nor the alerts use it")
    for name in sorted(exported):
        print(f"note: {name} is exported now: move it out of README.md's list of metrics still to add")
    print(f"{len(seen)} metric names checked ({len(pending)} still to be added by the services: {', '.join(sorted(pending))})")

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY

log "== promtool"
if PROMTOOL_BIN="$(find_promtool)"; then
  log "    ($("$PROMTOOL_BIN" --version 2>/dev/null | head -n 1), $PROMTOOL_BIN)"
  check "promtool check config $OBS/prometheus/prometheus.yml (and its rule files)" \
    "$PROMTOOL_BIN" check config "$OBS/prometheus/prometheus.yml"
  check "promtool check rules $OBS/prometheus/alerts.yml" \
    "$PROMTOOL_BIN" check rules "$OBS/prometheus/alerts.yml"
  check "promtool test rules $OBS/prometheus/alerts.test.yml" \
    "$PROMTOOL_BIN" test rules "$OBS/prometheus/alerts.test.yml"
  PROMTOOL_OK=1
else
  skip promtool "$PROMTOOL_BIN"
  PROMTOOL_OK=0
fi

log "== dashboard, scrape targets, metric drift"
if PYTHON="$(find_python_yaml)"; then
  if [[ $PROMTOOL_OK == 1 ]]; then
    if "$PYTHON" "$PY_CHECKS" "$ROOT" dashboard-rules >"$WORK/dashboard-rules.yml" 2>"$WORK/err.txt"; then
      check "every dashboard expression parses (promtool check rules)" \
        "$PROMTOOL_BIN" check rules "$WORK/dashboard-rules.yml"
    else
      sed 's/^/    /' "$WORK/err.txt"
      fail "every dashboard expression parses (the dashboard could not be read)"
    fi
  fi
  check "dashboard JSON: structure, datasource uid, provisioning path" "$PYTHON" "$PY_CHECKS" "$ROOT" dashboard
  check "prometheus.yml scrapes every service instance of docker-compose.yml" "$PYTHON" "$PY_CHECKS" "$ROOT" scrape
  check "metric names in the dashboard and alerts exist (Rust sources, RabbitMQ, README's list to add)" \
    "$PYTHON" "$PY_CHECKS" "$ROOT" drift
else
  skip "PyYAML (dashboard and drift checks)" "$PYTHON"
fi

[[ $FAILED -eq 0 ]]
