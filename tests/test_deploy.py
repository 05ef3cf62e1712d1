"""deploy/: the example configs load, the dashboard and alerts use real metric names, and
the systemd units verify clean."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from cortex.config import load_gateway_config, load_neuron_config
from tests.e2e.procs import Gateway, Neuron

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = ("cortex.service", "neuron.service")

# PromQL keywords that stand bare (functions and aggregations are known by the "(" after
# them, once grouping lists are gone): never metric names.
PROMQL_WORDS = frozenset(
    ("and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan")
)
# Series Prometheus makes itself, not any /metrics of ours.
PROMETHEUS_SERIES = frozenset({"up"})
# Sample suffixes by the family type they belong to.
SUFFIXES = {
    "_bucket": "histogram",
    "_sum": "histogram",
    "_count": "histogram",
    "_total": "counter",
    "_created": "counter",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once label matchers,
    grouping lists, strings, durations, variables and function calls are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # strings (also inside matchers)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", text):
        word, after = match.group(), text[match.end() :].lstrip()
        if not after.startswith("(") and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def test_metric_names_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(foo_seconds_bucket{model=~"$model"}'
        '[$__rate_interval]))) / on (node) group_left bar_total > 2 or baz{a="b"} == 0'
    )
    assert metric_names(expr) == {"foo_seconds_bucket", "bar_total", "baz"}
    assert metric_names("label_values(cortex_requests_total, model)") >= {"cortex_requests_total"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 36
    assert any(i["name"] == "DS_PROMETHEUS" for i in dashboard["__inputs"])
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            exprs.append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and (m := re.match(r"label_values\((\w+)\s*,", query)):
            exprs.append(m.group(1))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert all(rule.get("alert") for group in rules["groups"] for rule in group["rules"])
    return exprs


# ---------------------------------------------------------------- the example configs


def test_gateway_configs_load() -> None:
    cortex, models = load_gateway_config(DEPLOY / "cortex.toml")  # models.toml beside it
    assert [n.name for n in cortex.neurons] == ["gpu-a", "gpu-b"]
    assert cortex.keys_file == DEPLOY / "keys.toml"
    assert cortex.placement.strategy == "best-fit"
    assert cortex.placement.replica_after == 30.0
    assert models.models, "models.toml has profiles"
    for profile in models.models:
        assert set(profile.neurons) <= {"gpu-a", "gpu-b"}
        profile.load_options()  # what a load asks for
    for alias, target in models.aliases.items():
        assert models.profile(target) is not None, f"alias {alias} → unknown {target}"
    # Loaded explicitly too, as `cortex serve` does with a models.toml elsewhere.
    _, again = load_gateway_config(DEPLOY / "cortex.toml", DEPLOY / "models.toml")
    assert again == models


def test_neuron_config_loads(tmp_path: Path) -> None:
    raw = tomllib.loads((DEPLOY / "neuron.toml").read_text())
    # model_dirs must exist on the host; here they stand in as temp folders (a flag's
    # override, as `neuron serve --model-dir` gives), every other key comes from the file.
    for path in raw["model_dirs"]:
        assert Path(path).is_absolute()
    dirs = [tmp_path / f"models-{i}" for i in range(len(raw["model_dirs"]))]
    for folder in dirs:
        folder.mkdir()
    config = load_neuron_config(DEPLOY / "neuron.toml", {"model_dirs": dirs})
    assert config.name == "gpu-a"
    assert config.model_dirs == dirs
    gateway, _ = load_gateway_config(DEPLOY / "cortex.toml")
    entry = next(n for n in gateway.neurons if n.name == config.name)
    assert entry.token == config.admin_token  # the gateway sends this node's token
    assert entry.endpoint.endswith(f":{config.port}")


def test_prometheus_scrape_config() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway, _ = load_gateway_config(DEPLOY / "cortex.toml")
    metrics_port = gateway.gateway.metrics_listen.rpartition(":")[2]
    targets = [t for c in jobs["cortex-gateway"]["static_configs"] for t in c["targets"]]
    assert all(t.endswith(f":{metrics_port}") for t in targets)
    neuron_targets = {
        c["labels"]["node"]: c["targets"] for c in jobs["cortex-neuron"]["static_configs"]
    }
    assert set(neuron_targets) == {n.name for n in gateway.neurons}


# ---------------------------------------------------------------- metric names, for real


@pytest.fixture(scope="module")
def exposed_metrics(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[dict[str, str]]:
    """Metric families (name → type, from # TYPE lines) and sample names (→ "sample")
    from a real gateway's and neuron's /metrics, after one chat request through the
    gateway."""
    root = tmp_path_factory.mktemp("deploy-metrics")
    models = root / "models"
    shutil.copytree(tiny_model, models / "tiny")
    neuron = Neuron(
        ["--model-dir", str(models), "--preload", "tiny", "--name", "n1"], root / "neuron.log"
    )
    gateway: Gateway | None = None
    try:
        neuron.wait_ready()
        neuron.wait_loaded("tiny")
        gateway = Gateway({"n1": neuron}, "", root / "gateway")
        gateway.wait_ready()
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
        }
        with gateway.stream_post("/v1/chat/completions", body) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                pass
        texts = [gateway.metrics(), httpx.get(f"{neuron.url}/metrics", timeout=10).text]
        names: dict[str, str] = {}
        for text in texts:
            for line in text.splitlines():
                if line.startswith("# TYPE "):
                    _, _, family, kind = line.split()
                    names[family] = kind
                elif line and not line.startswith("#"):
                    names.setdefault(re.split(r"[{\s]", line, maxsplit=1)[0], "sample")
        assert "cortex_requests_total" in names, texts[0]
        yield names
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


def is_exposed(name: str, exposed: dict[str, str]) -> bool:
    if name in exposed or name in PROMETHEUS_SERIES:
        return True
    return any(
        name.endswith(suffix) and exposed.get(name.removesuffix(suffix)) == kind
        for suffix, kind in SUFFIXES.items()
    )


@pytest.mark.e2e
@pytest.mark.parametrize("source", ["grafana-dashboard.json", "alerts.yml"])
def test_metric_names_exist(source: str, exposed_metrics: dict[str, str]) -> None:
    exprs = dashboard_exprs() if source.endswith(".json") else alert_exprs()
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, f"no metric names found in {source}"
    missing = sorted(n for n in used if not is_exposed(n, exposed_metrics))
    assert not missing, f"{source} uses metrics no gateway or neuron exposes: {missing}"


# ---------------------------------------------------------------- systemd units


def test_units_name_the_install() -> None:
    gateway = (DEPLOY / "cortex.service").read_text()
    neuron = (DEPLOY / "neuron.service").read_text()
    assert "ExecStart=/opt/cortex/venv/bin/cortex serve --config /etc/cortex/cortex.toml" in (
        gateway
    )
    assert "ExecStart=/opt/cortex/venv/bin/neuron serve --config /etc/cortex/neuron.toml" in (
        neuron
    )
    assert "ExecReload=/bin/kill -HUP $MAINPID" in gateway  # keys_file, read on SIGHUP
    directives = [line.split("=", 1)[0] for line in neuron.splitlines() if "=" in line]
    assert "ExecReload" not in directives  # the neuron reads nothing again on SIGHUP
    assert "PrivateDevices" not in directives  # it needs /dev/nvidia*
    for text in (gateway, neuron):
        for line in ("User=cortex", "Restart=on-failure", "NoNewPrivileges=yes"):
            assert line in text.splitlines()


def test_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` in a --root tree holding what the units name: stub
    programs at /opt/cortex/venv/bin, /usr/bin/kill, and the host's own unit files (for
    sysinit.target, network-online.target…). Any line about our units fails."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "sysinit.target").is_file():
        pytest.skip("no /usr/lib/systemd/system/sysinit.target to verify against")
    root = tmp_path / "root"
    for stub in ("opt/cortex/venv/bin/cortex", "opt/cortex/venv/bin/neuron", "usr/bin/kill"):
        path = root / stub
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (root / "bin").symlink_to("usr/bin")  # /bin/kill, as on a merged-/usr host
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(DEPLOY / unit, root / "etc/systemd/system" / unit)
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", *UNITS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if any(u in line for u in UNITS)]
    assert not ours, output
    assert result.returncode == 0, output
