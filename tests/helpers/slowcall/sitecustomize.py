"""Slow libvirt calls for real `haagent run` processes (tests/integration/test_act_lease.py).

Python imports this at start-up when its directory is on PYTHONPATH. It does nothing unless
HAAGENT_SLOWCALL_DIR is set and this process is `haagent run --config .../NODE.toml`; then it
wraps two calls of libvirt's in-process test driver, as a slow libvirtd would make them:

    virDomain.setMetadata   held while `$DIR/NODE.hold-meta` exists (the start's worker
                            thread waits *before* the agent's last check and create())
    virDomain.create        held while `$DIR/NODE.hold` exists (after the last check: the
                            create() is in flight under the lease that authorised it)

and appends what happened to `$DIR/NODE.events`, one O_APPEND line each, with
CLOCK_MONOTONIC seconds: `meta-held T`, `meta-released T`, `create-called T`, `create-held T`,
`create-done T`. A hold never lasts more than 120 s.
"""

import os
import time


def _node():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in argv]
    if "haagent" not in " ".join(args) or "run" not in args or "--config" not in args:
        return None
    return os.path.splitext(os.path.basename(args[args.index("--config") + 1]))[0]


def _install(folder, node):
    import libvirt

    fd = os.open(os.path.join(folder, node + ".events"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def emit(what):
        os.write(fd, f"{what} {time.monotonic():.6f}\n".encode())

    def hold(name, label):
        path = os.path.join(folder, node + name)
        if not os.path.exists(path):
            return
        emit(label + "-held")
        deadline = time.monotonic() + 120
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        emit(label + "-released")

    set_metadata = libvirt.virDomain.setMetadata
    create = libvirt.virDomain.create

    def slow_set_metadata(self, *args, **kwargs):
        hold(".hold-meta", "meta")
        return set_metadata(self, *args, **kwargs)

    def slow_create(self, *args, **kwargs):
        emit("create-called")
        hold(".hold", "create")
        result = create(self, *args, **kwargs)
        emit("create-done")
        return result

    libvirt.virDomain.setMetadata = slow_set_metadata
    libvirt.virDomain.create = slow_create


_folder = os.environ.get("HAAGENT_SLOWCALL_DIR")
if _folder:
    _name = _node()
    if _name:
        _install(_folder, _name)
