"""The deployment files, checked statically (no Docker engine or systemd runs here):
docker/systemd/ units (systemd-analyze verify when the host has it, and what they promise),
docker/compose.yaml (one box) and docker/compose.cluster.yaml (Kamailio, two Asterisk nodes,
Redis Cluster of 3 masters + 3 replicas): every image builds from a file that exists, every port
is published on loopback only, every setting a service reads is a real config key, no secret in
the files."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from ics import config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
UNITS = DOCKER / "systemd"
SERVICES = ("ics-fastagi.service", "ics-ami.service", "ics-recorder.service")
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
CONFIG_ENV = {f"ICS_{section}_{key}".upper() for section in config.DEFAULTS for key in config.DEFAULTS[section]}
ENTRYPOINT_ENV = set(re.findall(r"\$\{?(ICS_[A-Z_]+)", (DOCKER / "asterisk-entrypoint.sh").read_text()))
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|AUTH)")
VAR_REF = re.compile(r"^\$\{[A-Z_]+:\?[^}]+\}$")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not on this host")
def test_units_pass_systemd_analyze_verify(tmp_path):
    """The units as installed, their ExecStart pointed at this checkout's venv (verify checks the
    binary exists); any complaint (a misspelt key or value) fails."""
    venv = REPO / ".venv" / "bin"
    names = [*SERVICES, "ics.target"]
    for name in names:
        text = (UNITS / name).read_text().replace("/opt/ics/venv/bin", str(venv))
        (tmp_path / name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)],
                       capture_output=True, text=True, timeout=60)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if any(n in line for n in names)]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_units_restart_on_failure_run_our_scripts_and_hold_no_secret(name):
    u = unit(name)
    s = u["Service"]
    assert s["Restart"] == "on-failure"
    exe = Path(s["ExecStart"].split()[0])
    assert exe.parent == Path("/opt/ics/venv/bin") and exe.name in SCRIPTS
    assert s["User"] == "ics" and s["NoNewPrivileges"] == "yes"
    env_file = s["EnvironmentFile"]
    assert env_file.startswith("/etc/ics/") and env_file.endswith(".env")
    assert not SECRET_NAME.search(s.get("Environment", "")), "a secret in the unit"
    assert u["Install"]["WantedBy"] == "ics.target"


def test_fastagi_unit_waits_out_the_drain():
    s = unit("ics-fastagi.service")["Service"]
    assert s["KillSignal"] == "SIGTERM"
    assert int(s["TimeoutStopSec"]) > config.DEFAULTS["fastagi"]["drain_timeout_s"]


# --- compose -------------------------------------------------------------------------------------

def compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def bridge_image(svc: dict) -> bool:
    return svc.get("image") == "ics-bridge"


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cluster.yaml"])
def test_compose_images_ports_env_and_secrets(name):
    c = compose(name)
    services = c["services"]
    for sname, svc in services.items():
        assert svc.get("image") or svc.get("build"), sname
        build = svc.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{sname}: no {build['dockerfile']}"
        for port in svc.get("ports", []):  # published on the host's loopback only
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+(/udp|/tcp)?", str(port)), f"{sname}: {port}"
        mode = svc.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.split(":", 1)[1] in services, f"{sname}: {mode}"
        if mode == "host":  # shares the host's addresses: its own bind must be loopback
            cmd = " ".join(map(str, svc.get("command", [])))
            if "redis-server" in cmd:
                assert "--bind 127.0.0.1" in cmd
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{sname} depends on unknown {dep}"
        env = svc.get("environment", {})
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert VAR_REF.match(str(value)), f"{sname}: {key} is not taken from the environment"
            if bridge_image(svc) and key.startswith("ICS_"):
                assert key in CONFIG_ENV, f"{sname}: {key} is no setting of ics.config"
            elif sname.startswith("asterisk") and key.startswith("ICS_"):
                assert key in ENTRYPOINT_ENV, f"{sname}: {key} is not read by asterisk-entrypoint.sh"
        for vol in svc.get("volumes", []):
            src = str(vol).split(":")[0]
            if src.startswith("..") and "kamailio" not in src:  # repo files mounted into a container
                assert (DOCKER / src).exists(), f"{sname}: {src} does not exist"
    text = (DOCKER / name).read_text()
    assert not re.search(r"(SECRET|PASSWORD)\w*:\s*[A-Za-z0-9]{8,}\s*$", text, re.M), "a literal secret"


def test_every_python_service_logs_in_to_redis_as_its_own_user():
    for name in ("compose.yaml", "compose.cluster.yaml"):
        for sname, svc in compose(name)["services"].items():
            if bridge_image(svc) and svc.get("command") in (["ics-fastagi"], ["ics-ami"]):
                env = svc["environment"]
                want = "fastagi" if svc["command"] == ["ics-fastagi"] else "listener"
                assert env["ICS_REDIS_USERNAME"] == want, (name, sname)
                assert want.upper() in env["ICS_REDIS_PASSWORD"], (name, sname)


def test_keys_stored_before_hash_tags_are_renamed_as_icsctl_before_any_fastagi_starts():
    for name in ("compose.yaml", "compose.cluster.yaml"):
        services = compose(name)["services"]
        migrate = services["keys-migrate"]
        assert migrate["command"][:3] == ["icsctl", "keys", "migrate"]
        assert migrate["environment"]["ICS_REDIS_USERNAME"] == "icsctl"
        assert "ICSCTL" in migrate["environment"]["ICS_REDIS_PASSWORD"]
        for sname, svc in services.items():
            if svc.get("command") == ["ics-fastagi"]:
                assert svc["depends_on"]["keys-migrate"] == {"condition": "service_completed_successfully"}, sname


def test_cluster_topology():
    services = compose("compose.cluster.yaml")["services"]
    redis = {n: s for n, s in services.items() if "--cluster-enabled" in s.get("command", [])}
    assert len(redis) == 6
    for s in redis.values():
        cmd = s["command"]
        assert cmd[cmd.index("--aclfile") + 1] == "/etc/redis/users.acl"
        assert cmd[cmd.index("--bind") + 1].startswith("10.77.0.")
    init = services["redis-cluster-init"]["command"]
    assert init[init.index("--cluster-replicas") + 1] == "1"  # 6 nodes: 3 masters, 3 replicas
    addrs = {a for a in init if re.fullmatch(r"10\.77\.0\.\d+:6379", a)}
    assert addrs == {f"{s['command'][s['command'].index('--bind') + 1]}:6379" for s in redis.values()}
    nodes = sorted(n for n in services if n.startswith("asterisk-"))
    assert nodes == ["asterisk-a", "asterisk-b"]
    for node in nodes:
        x = node.split("-")[1]
        for svc, exe in ((f"fastagi-{x}", "ics-fastagi"), (f"ami-{x}", "ics-ami")):
            assert services[svc]["command"] == [exe]
            assert services[svc]["network_mode"] == f"service:{node}"  # AMI, FastAGI on the node only
        assert services[f"fastagi-{x}"]["environment"]["ICS_FASTAGI_HOST"] == "127.0.0.1"
    kam = services["kamailio"]
    assert "../dialplan/kamailio/kamailio.cfg:/etc/kamailio/kamailio.cfg:ro" in kam["volumes"]
    assert kam["ports"] == ["127.0.0.1:5060:5060/udp"]


def test_kamailio_config_the_cluster_mounts_exists():
    cfg = REPO / "dialplan" / "kamailio" / "kamailio.cfg"
    if not cfg.exists():
        pytest.skip("dialplan/kamailio/kamailio.cfg comes with the Kamailio work (farm branch)")
    assert cfg.stat().st_size > 0
