"""Power-loss hooks for real `haagent run` processes (tests/integration/test_power_loss.py).

Python imports this at start-up when its directory is on PYTHONPATH. It does nothing unless
HAAGENT_POWERCUT_DIR is set and this process is `haagent run --config .../NODE.toml`; then it
appends to `$HAAGENT_POWERCUT_DIR/NODE.events` (outside the power-loss file system, one
O_APPEND write per line, so a line survives the SIGKILL that follows it):

    start PID                  this incarnation began
    vote TERM CANDIDATE        a vote is handed to the transport
    apply INDEX SHA1           a committed command is applied to haagent's state
    cut POINT                  the process is about to SIGKILL itself

and it cuts the power (SIGKILLs itself) at the next POINT once `$DIR/NODE.arm` names it:
`vote` (right after a vote was sent), `ack` (right after an append was acknowledged),
`append` (an entry was appended, not yet fsynced), `snapshot` (a snapshot file was written:
randomly just before or just after its rename). The test then unmounts the node's file system
(what was not fsynced is gone), mounts it again and restarts the agent.

HAAGENT_POWERCUT_COMPACT=N makes the agent snapshot every N entries, so snapshots happen.
HAAGENT_POWERCUT_ROOT=DIR imports haagent from DIR (a checkout) in the agent only: putting DIR
on PYTHONPATH would also hand the fence agents our `fencing` folder instead of theirs.
"""

import os


def _node():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in argv]
    if "haagent" not in args or "run" not in args or "--config" not in args:
        return None
    return os.path.splitext(os.path.basename(args[args.index("--config") + 1]))[0]


def _install(folder, node):
    import hashlib
    import random
    import signal

    from haagent import consensus
    from haagent.vendor.pysyncobj import journal, serializer, transport

    fd = os.open(os.path.join(folder, node + ".events"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    arm = os.path.join(folder, node + ".arm")

    def emit(line):
        os.write(fd, (line + "\n").encode())

    def cut_if_armed(point):
        try:
            with open(arm) as f:
                armed = f.read().strip()
        except OSError:
            return
        if armed != point:
            return
        try:
            os.unlink(arm)
        except OSError:
            return
        emit("cut " + point)
        os.kill(os.getpid(), signal.SIGKILL)

    emit(f"start {os.getpid()}")

    send = transport.TCPTransport.send

    def traced_send(self, node_, message):
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "response_vote":
            emit(f"vote {message['term']} {getattr(node_, 'id', node_)}")
        result = send(self, node_, message)
        if kind == "response_vote":
            cut_if_armed("vote")
        elif kind == "next_node_idx" and message.get("success"):
            cut_if_armed("ack")
        return result

    transport.TCPTransport.send = traced_send

    add = journal.FileJournal.add

    def traced_add(self, *args):
        add(self, *args)
        cut_if_armed("append")

    journal.FileJournal.add = traced_add

    replace = serializer.atomicReplace

    def traced_replace(old, new):
        before = random.random() < 0.5
        if before:
            cut_if_armed("snapshot")
        result = replace(old, new)
        if not before:
            cut_if_armed("snapshot")
        return result

    serializer.atomicReplace = traced_replace

    instances = []
    init = consensus._ReplicatedLog.__init__

    def traced_init(self, *args, **kwargs):
        instances.append(self)
        init(self, *args, **kwargs)

    consensus._ReplicatedLog.__init__ = traced_init

    on_apply = consensus.RaftConsensus._on_apply

    def traced_apply(self, payload, appended_at):
        index = instances[-1].raftLastApplied + 1
        emit(f"apply {index} {hashlib.sha1(bytes(payload)).hexdigest()[:16]}")
        return on_apply(self, payload, appended_at)

    consensus.RaftConsensus._on_apply = traced_apply

    compact = os.environ.get("HAAGENT_POWERCUT_COMPACT")
    if compact:
        conf_class = consensus.SyncObjConf

        def conf(**kwargs):
            kwargs["logCompactionMinEntries"] = int(compact)
            return conf_class(**kwargs)

        consensus.SyncObjConf = conf


_folder = os.environ.get("HAAGENT_POWERCUT_DIR")
_me = _node() if _folder else None
if _me:
    import sys

    if os.environ.get("HAAGENT_POWERCUT_ROOT"):
        sys.path.insert(0, os.environ["HAAGENT_POWERCUT_ROOT"])
    _install(_folder, _me)
