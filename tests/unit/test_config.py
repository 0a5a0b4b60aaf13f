"""Config files: the shipped examples load, and every mistake gets file + key + reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from haagent.config import DEFAULT_TIMING_PROFILE, TIMING_PROFILES, ConfigError, load_config
from haagent.model import FenceMethod, NodeRole, StorageKind

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"

VALID = """
[cluster]
name = "prod"
secret = "0123456789abcdef"

[local]
node = "n1"
data_dir = "state"
libvirt_uri = "qemu:///system"
api_listen = "127.0.0.1:8400"
api_token = "token-token-token"

[nodes.n1]
address = "10.0.0.1:7400"
memory_mib = 4096
fence = [["ipmi-n1"], ["pdu-a", "pdu-b"]]

[nodes.n2]
address = "10.0.0.2:7400"
memory_mib = 4096
fence = "watchdog"
watchdog_timeout_s = 5

[nodes.w]
address = "10.0.0.3:7400"
role = "witness"

[fence_devices.ipmi-n1]
agent = "fence_ipmilan"
params = { ip = "10.1.0.1", username = "admin", password = "pw", lanplus = true, cipher = 3 }

[fence_devices.pdu-a]
agent = "fence_apc"
params = { ip = "10.1.0.9", plug = 1 }

[fence_devices.pdu-b]
agent = "fence_apc"
params = { ip = "10.1.0.10", plug = 1 }

[guests.web]
memory_mib = 1024
priority = 5
preferred_nodes = ["n1"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*/*.toml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.node == path.stem
    assert cfg.agent_settings().node == cfg.node


def test_a_full_config_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    assert cfg.data_dir == tmp_path / "state"
    assert cfg.nodes["w"].role is NodeRole.WITNESS
    assert cfg.nodes["n2"].fence_method is FenceMethod.WATCHDOG
    levels = cfg.fence_levels("n1")
    assert [[d.name for d in level] for level in levels] == [["ipmi-n1"], ["pdu-a", "pdu-b"]]
    assert levels[0][0].params["lanplus"] == "1" and levels[0][0].params["cipher"] == "3"
    assert cfg.guests["web"].spec.domain == "web"


def test_a_migration_uri_reaches_the_core(tmp_path: Path) -> None:
    text = VALID.replace(
        'fence = "watchdog"', 'fence = "watchdog"\nmigration_uri = "qemu+ssh://root@hv2/system"'
    )
    settings = load_config(write(tmp_path, text)).agent_settings()
    assert settings.nodes["n2"].migration_uri == "qemu+ssh://root@hv2/system"
    assert settings.nodes["n1"].migration_uri == ""
    assert not settings.live_evacuation  # n1 has none: maintenance stops and restarts


def test_a_final_watchdog_level_follows_the_power_levels(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, VALID.replace('["pdu-a", "pdu-b"]]', '["pdu-a", "pdu-b"], "watchdog"]'))
    )
    n1 = cfg.nodes["n1"]
    assert n1.fence_method is FenceMethod.AGENT and n1.watchdog_level
    assert n1.fence_levels == (("ipmi-n1",), ("pdu-a", "pdu-b"))
    assert cfg.agent_settings().nodes["n1"].relies_on_watchdog
    assert not cfg.nodes["n2"].watchdog_level  # fence = "watchdog": watchdog only
    assert cfg.agent_settings().nodes["n2"].relies_on_watchdog
    assert not load_config(write(tmp_path, VALID)).agent_settings().nodes["n1"].relies_on_watchdog


def test_timing_profiles_give_defaults_and_explicit_keys_win(tmp_path: Path) -> None:
    default = load_config(write(tmp_path, VALID)).timing
    assert DEFAULT_TIMING_PROFILE == "balanced"
    assert default == TIMING_PROFILES["balanced"] == TIMING_PROFILES[DEFAULT_TIMING_PROFILE]
    assert (default.lease_s, default.failure_timeout_s) == (1.2, 1.6)
    robust = load_config(write(tmp_path, VALID + '\n[timing]\nprofile = "robust"\n')).timing
    assert robust == TIMING_PROFILES["robust"]
    assert (robust.lease_s, robust.failure_timeout_s) == (3.0, 4.0)
    fast = load_config(write(tmp_path, VALID + '\n[timing]\nprofile = "fast"\n')).timing
    assert fast == TIMING_PROFILES["fast"]
    assert (fast.lease_s, fast.failure_timeout_s) == (1.0, 1.4)
    tuned = load_config(
        write(tmp_path, VALID + '\n[timing]\nprofile = "fast"\nfailure_timeout_s = 2\n')
    ).timing
    assert tuned.failure_timeout_s == 2.0 and tuned.lease_s == 1.0


def mutate(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


def drbd(extra: str, *, preferred: bool = True) -> str:
    """VALID with guest `web` on DRBD between n1 and n2, plus `extra` lines in its table."""
    lines = 'storage = "drbd"\n'
    if "replica_nodes" not in extra:
        lines += 'replica_nodes = ["n1", "n2"]\n'
    text = mutate("priority = 5", f"priority = 5\n{lines}{extra}")
    return text if preferred else text.replace('preferred_nodes = ["n1"]\n', "")


def drbd_3hv(extra: str) -> str:
    """`drbd(extra)` with a third hypervisor n3."""
    n3 = '[nodes.n3]\naddress = "10.0.0.4:7400"\nmemory_mib = 1024\nfence = "watchdog"\n\n'
    return drbd(extra).replace("[nodes.w]", n3 + "[nodes.w]")


def test_a_drbd_guest_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, drbd('resource = "r0"')))
    spec = cfg.guests["web"].spec
    assert (spec.storage, spec.resource, spec.replica_nodes) == (
        StorageKind.DRBD,
        "r0",
        ("n1", "n2"),
    )
    assert cfg.drbd_resources() == ("r0",)
    assert cfg.drbd_fence_socket == Path("/run/haagent/drbd-fence.sock")
    # The resource defaults to the guest's name; a third hypervisor holds no replica.
    cfg = load_config(write(tmp_path, drbd_3hv("").replace('node = "n1"', 'node = "n3"')))
    assert cfg.guests["web"].spec.resource == "web" and cfg.drbd_resources() == ()
    assert not cfg.guests["web"].spec.allows("n3")
    sock = mutate('api_token = "token', 'drbd_fence_socket = "/run/x.sock"\napi_token = "token')
    assert load_config(write(tmp_path, sock)).drbd_fence_socket == Path("/run/x.sock")


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (mutate('secret = "0123456789abcdef"\n', ""), "cluster.secret", "missing"),
        (mutate('secret = "0123456789abcdef"', 'secret = "short"'), "cluster.secret", "too short"),
        (mutate('name = "prod"', 'name = "bad name"'), "cluster.name", "must match"),
        (mutate("[local]", "[local]\nlease_s = 3"), "local.lease_s", "unknown key"),
        (VALID + "\n[timing]\nlease = 2\n", "timing.lease", "unknown key"),
        (
            VALID + "\n[timing]\nheartbeat_s = 0.5\nlease_s = 2\nfailure_timeout_s = 2.1\n",
            "timing.failure_timeout_s",
            "must exceed lease_s + stop_grace_s",
        ),
        (VALID + "\n[timing]\nheartbeat_s = 1.5\n", "timing.lease_s", "at least 3 x heartbeat_s"),
        # The old rule (max < lease) let a leader's death cost the survivors their lease.
        (
            VALID + '\n[timing]\nprofile = "robust"\nelection_timeout_max_s = 2.0\n',
            "timing.election_timeout_max_s",
            "at most lease_s - heartbeat_s - 0.2s (1.8s)",
        ),
        (
            VALID + '\n[timing]\nprofile = "balanced"\nelection_timeout_max_s = 0.61\n',
            "timing.election_timeout_max_s",
            "must fit in the rest of its lease",
        ),
        (
            VALID + '\n[timing]\nprofile = "quick"\n',
            "timing.profile",
            "must be one of balanced, fast, robust",
        ),
        (VALID + '\n[timing]\nlease_s = "1"\n', "timing.lease_s", "must be a number"),
        (
            VALID + "\n[timing]\nstop_grace_s = -1\n",
            "timing.stop_grace_s",
            "must be between 0.001 and",
        ),
        (
            VALID + "\n[placement]\nfailure_reset_s = 0\n",
            "placement.failure_reset_s",
            "must be between 0.001 and",
        ),
        (mutate('node = "n1"', 'node = "n9"'), "local.node", "not one of [nodes]"),
        (mutate('libvirt_uri = "qemu:///system"\n', ""), "local.libvirt_uri", "required"),
        (
            mutate('api_listen = "127.0.0.1:8400"', 'api_listen = "8400"'),
            "local.api_listen",
            "host:port",
        ),
        (
            mutate('api_token = "token-token-token"', 'api_token_file = "missing"'),
            "local.api_token_file",
            "cannot read",
        ),
        (
            mutate('address = "10.0.0.2:7400"', 'address = "10.0.0.1:7400"'),
            "nodes.n2.address",
            "also the address of n1",
        ),
        (
            mutate('fence = [["ipmi-n1"], ["pdu-a", "pdu-b"]]', 'fence = [["nope"]]'),
            "nodes.n1.fence",
            "unknown fence device 'nope'",
        ),
        (
            mutate('fence = [["ipmi-n1"], ["pdu-a", "pdu-b"]]\n', ""),
            "nodes.n1.fence",
            "must be fenceable",
        ),
        (
            mutate('fence = [["ipmi-n1"], ["pdu-a", "pdu-b"]]', "fence = [[]]"),
            "nodes.n1.fence",
            "level 1 must be a non-empty list",
        ),
        (
            mutate('role = "witness"', 'role = "witness"\nmemory_mib = 5'),
            "nodes.w.memory_mib",
            "runs no guests",
        ),
        (mutate('role = "witness"', 'role = "arbiter"'), "nodes.w.role", "hypervisor or witness"),
        (
            mutate('memory_mib = 4096\nfence = "watchdog"', 'fence = "watchdog"'),
            "nodes.n2.memory_mib",
            "required on a hypervisor",
        ),
        (
            mutate(
                'agent = "fence_apc"\nparams = { ip = "10.1.0.9", plug = 1 }',
                'agent = "rm -rf"\nparams = {}',
            ),
            "fence_devices.pdu-a.agent",
            "fence_* agent name",
        ),
        (
            mutate(
                "plug = 1 }\n\n[fence_devices.pdu-b]", 'action = "on" }\n\n[fence_devices.pdu-b]'
            ),
            "fence_devices.pdu-a.params.action",
            "set by haagent",
        ),
        (
            mutate('preferred_nodes = ["n1"]', 'preferred_nodes = ["w"]'),
            "guests.web.preferred_nodes",
            "not a hypervisor",
        ),
        (mutate("memory_mib = 1024\npriority", "priority"), "guests.web.memory_mib", "missing"),
        (
            mutate("priority = 5", 'priority = 5\nstorage = "drbd"'),
            "guests.web.replica_nodes",
            "required with storage",
        ),
        (
            mutate("priority = 5", 'priority = 5\nstorage = "nfs"'),
            "guests.web.storage",
            "unsupported storage kind 'nfs' (supported: shared, drbd, raid1)",
        ),
        (drbd('replica_nodes = ["n1"]'), "guests.web.replica_nodes", "exactly two different"),
        (drbd('replica_nodes = ["n1", "n1"]'), "guests.web.replica_nodes", "exactly two"),
        (
            drbd('replica_nodes = ["n1", "n2", "n2"]'),
            "guests.web.replica_nodes",
            "exactly two different",
        ),
        (drbd('replica_nodes = ["n1", "w"]'), "guests.web.replica_nodes", "not a hypervisor"),
        (drbd('replica_nodes = "n1,n2"'), "guests.web.replica_nodes", "list of node names"),
        (drbd('resource = "-rf"'), "guests.web.resource", "must match"),
        (drbd('resource = "r0;rm"'), "guests.web.resource", "must match"),
        (drbd("resource = 7"), "guests.web.resource", "must be a string"),
        (
            drbd('preferred_nodes = ["n3"]', preferred=False),
            "guests.web.preferred_nodes",
            "'n3' is not a hypervisor",
        ),
        (
            drbd_3hv('allowed_nodes = ["n1", "n3"]'),
            "guests.web.allowed_nodes",
            "'n3' holds no replica",
        ),
        (
            drbd("") + '\n[guests.db]\nmemory_mib = 1\nstorage = "drbd"\nresource = "web"\n'
            'replica_nodes = ["n1", "n2"]\n',
            "guests.db.resource",
            "also the resource of guest web",
        ),
        (
            mutate("priority = 5", 'priority = 5\nresource = "r0"'),
            "guests.web.resource",
            'only for storage = "drbd"',
        ),
        (
            mutate("priority = 5", 'priority = 5\nreplica_nodes = ["n1", "n2"]'),
            "guests.web.replica_nodes",
            'only for storage = "drbd"',
        ),
        (
            mutate('api_token = "token', 'drbd_fence_socket = "fence.sock"\napi_token = "token'),
            "local.drbd_fence_socket",
            "absolute socket path",
        ),
        (
            mutate('api_token = "token', f'drbd_fence_socket = "/{"s" * 120}"\napi_token = "token'),
            "local.drbd_fence_socket",
            "at most 107 bytes",
        ),
        (
            mutate('api_token = "token', 'drbd_fence_socket = "/a\\u0000b"\napi_token = "token'),
            "local.drbd_fence_socket",
            "control characters",
        ),
        (
            mutate("priority = 5", 'priority = 5\nxml = "nope.xml"'),
            "guests.web.xml",
            "No such file or directory",
        ),
        (
            mutate('fence = [["ipmi-n1"], ["pdu-a"', 'fence = ["watchdog", ["ipmi-n1"], ["pdu-a"'),
            "nodes.n1.fence",
            "can only be the last level",
        ),
        (
            mutate('[nodes.w]\naddress = "10.0.0.3:7400"\nrole = "witness"\n', ""),
            "nodes",
            "add a witness",
        ),
        (
            mutate('fence = "watchdog"', 'fence = "watchdog"\nmigration_uri = "qemu:///system"'),
            "nodes.n2.migration_uri",
            "must be a remote libvirt URI",
        ),
        (
            mutate('fence = "watchdog"', 'fence = "watchdog"\nmigration_uri = "qemu+tcp://a b/x"'),
            "nodes.n2.migration_uri",
            "no blanks",
        ),
        (
            mutate('role = "witness"', 'role = "witness"\nmigration_uri = "qemu+tcp://w/system"'),
            "nodes.w.migration_uri",
            "a witness runs no guests",
        ),
    ],
)
def test_mistakes_name_the_key_and_the_problem(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.file == str(path)
    assert err.value.key == key, str(err.value)
    assert message in err.value.message, str(err.value)


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[cluster\nname="))


def haagent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haagent", *args],
        check=False,  # the exit status is what the tests check
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, mutate("[local]", "[local]\nlease_s = 3"))
    for args in (["check-config", str(path)], ["run", "--config", str(path)]):
        proc = haagent_cli(*args)
        assert proc.returncode == 2, proc
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip() == (
            f"haagent: invalid config: {path}: local.lease_s: "
            "unknown key (check the spelling; see the README)"
        )


def test_the_cli_rejects_bad_arguments_with_exit_2() -> None:
    proc = haagent_cli("status", "--bogus")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = haagent_cli("status")
    assert proc.returncode == 2 and "give --config" in proc.stderr
    for args, why in (
        (("guest", "migrate", "g1"), "migrate takes a guest name and a destination node"),
        (("guest", "enable", "g1", "n2"), "enable takes a guest name only"),
        (("guest", "migrate", "g1", "n2", "--generation", "-1"), "non-negative"),
    ):
        proc = haagent_cli(*args, "--url", "http://127.0.0.1:1", "--token", "t")
        assert proc.returncode == 2 and why in proc.stderr, proc
        assert "Traceback" not in proc.stderr


def _example_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "ex"
    shutil.copytree(EXAMPLES / "local-3node", dest)
    os.mkfifo(dest / "fifo")
    (dest / "binary").write_bytes(bytes(range(256)))
    return dest / "n1.toml"


# Each hostile input of issue 13 through the real executable: exit 2, one line, the key.
HOSTILE = [
    ("file-not-utf8", None, "", "cannot read: not UTF-8 text"),
    ("deep-array", ("[placement]", "[placement]\nx = " + "[" * 1000 + "]" * 1000), "", "nested"),
    (
        "nan",
        ("failure_timeout_s = 1.4", "failure_timeout_s = nan"),
        "timing.failure_timeout_s",
        "finite",
    ),
    (
        "inf-watchdog",
        ('fence = [["bmc-n1"]]', 'fence = [["bmc-n1"]]\nwatchdog_timeout_s = inf'),
        "nodes.n1.watchdog_timeout_s",
        "finite",
    ),
    (
        "rounding",
        (
            "lease_s = 1.0\nfailure_timeout_s = 1.4\nstop_grace_s = 0.3",
            "lease_s = 0.7\nfailure_timeout_s = 0.9\nstop_grace_s = 0.2",
        ),
        "timing.failure_timeout_s",
        "must exceed",
    ),
    (
        "port-digits",
        ('"127.0.0.1:7401"', '"127.0.0.1:\u0667\u0664\u0660\u0661"'),
        "nodes.n1.address",
        "port 1-65535",
    ),
    (
        "two-spellings",
        ('"127.0.0.1:7402"', '"[::ffff:127.0.0.1]:7401"'),
        "nodes.n2.address",
        "is also the address of n1",
    ),
    ("newline-name", ("[nodes.n3]", '[nodes."n3\\n"]'), "nodes.n3\\n", "must match"),
    (
        "nul-path",
        ('data_dir = "state/n1"', 'data_dir = "state/\\u0000n1"'),
        "local.data_dir",
        "control characters",
    ),
    (
        "long-path",
        ('data_dir = "state/n1"', f'data_dir = "{"x/" * 2500}"'),
        "local.data_dir",
        "longer than",
    ),
    (
        "nul-socket",
        ('api_listen = "127.0.0.1:8401"', 'api_listen = "unix:/run/a\\u0000.sock"'),
        "local.api_listen",
        "control characters",
    ),
    (
        "dev-zero",
        ('secret = "local-demo-secret-change-me"', 'secret_file = "/dev/zero"'),
        "cluster.secret_file",
        "not a regular file",
    ),
    (
        "fifo-secret",
        ('secret = "local-demo-secret-change-me"', 'secret_file = "fifo"'),
        "cluster.secret_file",
        "not a regular file",
    ),
    (
        "fifo-token",
        ('api_token = "local-demo-token"', 'api_token_file = "fifo"'),
        "local.api_token_file",
        "not a regular file",
    ),
    (
        "binary-secret",
        ('secret = "local-demo-secret-change-me"', 'secret_file = "binary"'),
        "cluster.secret_file",
        "not UTF-8",
    ),
    (
        "non-ascii-token",
        ('api_token = "local-demo-token"', 'api_token = "local-démo-token"'),
        "local.api_token",
        "visible ASCII",
    ),
    (
        "param-blank",
        ('username = "admin"', 'username = " admin"'),
        "fence_devices.bmc-n1.params",
        "blanks",
    ),
    (
        "param-control",
        ('username = "admin"', 'username = "ad\\tmin"'),
        "fence_devices.bmc-n1.params",
        "control character",
    ),
    (
        "param-name",
        ('username = "admin"', '"user\\nname" = "admin"'),
        "fence_devices.bmc-n1.params",
        "invalid parameter name",
    ),
    (
        "fifo-watchdog",
        ('node = "n1"', 'node = "n1"\nwatchdog_device = "fifo"'),
        "local.watchdog_device",
        "not a character device",
    ),
]


@pytest.mark.parametrize(
    ("change", "key", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_inputs_are_one_clear_line_from_the_real_cli(
    tmp_path: Path, change: tuple[str, str] | None, key: str, message: str
) -> None:
    path = _example_copy(tmp_path)
    if change is None:
        path.write_bytes(path.read_bytes().replace(b"local-demo", b"local-\xffdemo", 1))
    else:
        old, new = change
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    proc = haagent_cli("check-config", str(path))
    assert proc.returncode == 2, proc
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    line = proc.stderr.rstrip("\n")
    assert line.isprintable(), line
    prefix = f"haagent: invalid config: {path}: " + (f"{key}: " if key else "")
    assert line.startswith(prefix), line
    assert message in line, line


DOMAINS = Path(__file__).resolve().parents[1] / "fixtures" / "domains"


def test_a_guests_networks_come_from_its_domain_xml(tmp_path: Path) -> None:
    shutil.copy(DOMAINS / "bridge-vlan-direct.xml", tmp_path / "web.xml")
    config = load_config(
        write(tmp_path, VALID.replace("priority = 5", 'priority = 5\nxml = "web.xml"'))
    )
    assert config.guests["web"].spec.networks == ("br-backend", "br0.100", "eth0.200", "eth1")


def test_a_libvirt_network_in_the_domain_xml_is_needed_by_name(tmp_path: Path) -> None:
    shutil.copy(DOMAINS / "network.xml", tmp_path / "web.xml")
    path = write(tmp_path, VALID.replace("priority = 5", 'priority = 5\nxml = "web.xml"'))
    assert load_config(path).guests["web"].spec.networks == ("network:default",)
    text = (DOMAINS / "network.xml").read_text().replace("'default'", "'a/b'")
    (tmp_path / "web.xml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "guests.web.xml"
    assert "must name a libvirt network" in err.value.message


def test_check_config_says_when_the_timing_profile_is_left_to_the_default(tmp_path: Path) -> None:
    """A file that names no profile gets the built-in default, which a version may change;
    check-config says so (exit 0: the file is valid), and says nothing more once it is named."""
    unnamed = haagent_cli("check-config", str(write(tmp_path, VALID)))
    assert unnamed.returncode == 0, unnamed
    assert load_config(write(tmp_path, VALID)).timing_profile is None
    assert unnamed.stdout.count("\n") == 1, unnamed.stdout  # still one line per file
    assert (
        f"timing profile {DEFAULT_TIMING_PROFILE}, only as the built-in default" in unnamed.stdout
    )
    assert f'[timing] profile = "{DEFAULT_TIMING_PROFILE}" into every node' in unnamed.stdout
    named_text = VALID + '\n[timing]\nprofile = "robust"\n'
    named = haagent_cli("check-config", str(write(tmp_path, named_text)))
    assert named.returncode == 0, named
    assert named.stdout.endswith(", timing profile robust)\n"), named.stdout
    cfg = load_config(write(tmp_path, named_text))
    assert cfg.timing_profile == "robust" and cfg.timing_note() == (False, "timing profile robust")
