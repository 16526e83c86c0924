# The sandbox's trusted bootstrap, run by `python -I -S` with lorastudy/evaluation/plain.py's source before it
# (the value codec), compiled once by the evaluator and handed over as marshal data. Never imported: it runs in a
# bare interpreter that sees no project files.
#
# outer (in a process group of its own; put into the run's cgroups before it goes on, then it makes the namespaces)
#   -> init (pid 1 of the new PID namespace: builds the private root, mounts a fresh /proc, pivots into it)
#     -> program (an unprivileged uid of its own, rlimits, no new privileges; then the untrusted code).
# The outer process is either a fresh interpreter of its own (`main`), or forked from a server (`serve`, a zygote
# the evaluator keeps: the same bootstrap already loaded, it forks one outer per run and reads no run's data).
# Exit statuses are relayed up (128+signal for a signalled child). Failures of the set-up exit with status 125
# and a line starting "sandbox setup error". Kept free of heavy imports: interpreter start-up dominates a run.
import ctypes
import marshal
import os
import resource
import site
import sys
import types

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}  # syscall numbers (no libc wrapper)
LIBC = ctypes.CDLL(None, use_errno=True)


def fatal(msg):
    os.write(2, ("sandbox setup error: " + msg + "\n").encode())
    os._exit(125)


def relay(status):
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def mount(source, target, fstype, flags, data=None):
    enc = (lambda s: None if s is None else s.encode())
    if LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        fatal("mount %s on %s: %s" % (source, target, os.strerror(ctypes.get_errno())))


def bind_readonly(path, root):
    """The host's `path` (a folder or a file) at the same place under `root`, read-only."""
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(path, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def private_root(cfg):
    """A new root in this mount namespace: a small read-only tmpfs holding the interpreter's trees read-only,
    the few device files a program needs, a fresh /proc and a size-capped private /tmp; nothing else of the host
    (no project, no problems file, no home, no other run). Then pivot_root into it and drop the old root."""
    root = cfg["newroot"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for path in cfg["ro"].split(":"):
        if os.path.exists(path):
            bind_readonly(path, root)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):  # merged-/usr links, else the folders
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), root + host)
        elif os.path.isdir(host):
            bind_readonly(host, root)
    os.makedirs(root + "/dev")
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(root + "/dev/" + dev, "a").close()
        mount("/dev/" + dev, root + "/dev/" + dev, None, MS_BIND)
    os.makedirs(root + "/tmp")
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          "size=%s,nr_inodes=%s,mode=1777" % (cfg["tmp_bytes"], cfg["tmp_inodes"]))
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/.old")
    number = PIVOT_ROOT.get(os.uname().machine)
    if number is None or LIBC.syscall(number, root.encode(), (root + "/.old").encode()) != 0:
        fatal("pivot_root: " + os.strerror(ctypes.get_errno()))
    os.chdir("/")
    if LIBC.umount2(b"/.old", MNT_DETACH) != 0:
        fatal("umount the old root: " + os.strerror(ctypes.get_errno()))
    os.rmdir("/.old")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def user_tasks(uid):
    count = 0
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat("/proc/" + entry).st_uid == uid:
                count += len(os.listdir("/proc/" + entry + "/task"))
        except OSError:
            pass
    return count


def reroute_unreadable(dirfds):
    # Without a private root: an interpreter installed under a private directory (e.g. pyenv in /root, mode
    # 0700) cannot import anything more once the process is unprivileged. Directory fds opened while root still
    # work through /proc/self/fd, and expose no more than those trees' own permission bits allow.
    blocked = sorted((p for p in dirfds if not os.access(p, os.R_OK | os.X_OK)), key=len, reverse=True)

    def via_fd(path):
        for root in blocked:
            if path == root or path.startswith(root + "/"):
                return "/proc/self/fd/%d%s" % (dirfds[root], path[len(root):])
        return path

    sys.path[:] = [via_fd(p) for p in sys.path]
    for module in list(sys.modules.values()):
        paths = getattr(module, "__path__", None)
        if type(paths) is list:
            paths[:] = [via_fd(p) for p in paths]
    sys.path_importer_cache.clear()


def set_limits(cfg):
    def lower(res, soft, hard):
        _, cur = resource.getrlimit(res)
        if cur != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur), min(hard, cur)
        resource.setrlimit(res, (soft, hard))

    nproc = int(cfg["nproc"])
    if cfg["nproc_relative"] == "1":
        nproc += user_tasks(os.getuid())
    cpu = int(cfg["cpu"])
    lower(resource.RLIMIT_CORE, 0, 0)
    lower(resource.RLIMIT_CPU, cpu, cpu + 1)
    lower(resource.RLIMIT_FSIZE, int(cfg["fsize"]), int(cfg["fsize"]))
    lower(resource.RLIMIT_NPROC, nproc, nproc)
    lower(resource.RLIMIT_NOFILE, int(cfg["nofile"]), int(cfg["nofile"]))
    lower(resource.RLIMIT_AS, int(cfg["mem"]), int(cfg["mem"]))


DENIED = (  # no kernel surface a test program needs: namespaces, mounts, tracing, keys, modules, io_uring
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace", "process_vm_readv",
    "process_vm_writev", "keyctl", "add_key", "request_key", "bpf", "userfaultfd", "perf_event_open",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
    "name_to_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register", "fsopen", "fsmount",
    "move_mount", "open_tree", "fspick", "mount_setattr", "quotactl", "acct", "swapon", "swapoff", "reboot",
    "sethostname", "setdomainname", "personality", "vhangup")
CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def seccomp_filter(library):
    """Refuse (EPERM) the syscalls of DENIED and a clone() into any new namespace; clone3, whose flags a
    filter cannot read, says ENOSYS so that libc falls back to clone(). Through libseccomp (libseccomp2)."""
    lib = ctypes.CDLL(library)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38  # SCMP_ACT_ERRNO(EPERM), SCMP_ACT_ERRNO(ENOSYS)

    def rule(action, name, cmp=None):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a syscall on this architecture
            return
        args = (ArgCmp * 1)(cmp) if cmp else None
        if lib.seccomp_rule_add_array(ctypes.c_void_p(ctx), action, number, 1 if cmp else 0, args) != 0:
            fatal("seccomp rule for " + name)

    for name in DENIED:
        rule(eperm, name)
    for flag in CLONE_NAMESPACES:
        rule(eperm, "clone", ArgCmp(0, 7, flag, flag))  # SCMP_CMP_MASKED_EQ on flags (argument 0)
    rule(enosys, "clone3")
    if lib.seccomp_load(ctypes.c_void_p(ctx)) != 0:
        fatal("seccomp_load")


def wait_for_cgroups(cfg):
    """Block until the evaluator has put this process into the run's cgroups (memory of all the run's processes
    together, and their number; every process it starts inherits them): it writes one byte once done. The
    evaluator joins us, not we ourselves, because the kernel moves a process that has barely started far faster
    than one whose interpreter is up (about 0.1 ms against 10-20 ms on cgroup v1)."""
    if cfg["go_fd"] == "-":
        return
    go = int(cfg["go_fd"])
    if os.read(go, 1) != b"1":
        fatal("the evaluator could not put the run into its cgroups")
    os.close(go)


def run_calls(module, payload, out_fd):
    """Call the entry point on each recorded argument list; write its values (plain data) or the names of the
    exceptions it raised, as one JSON document, to the result file."""
    fn = module.__dict__.get(payload["entry"])
    results = []
    if not callable(fn):
        results = None
    else:
        for call in payload["calls"]:
            args, kwargs = decode(call)  # noqa: F821 - plain.py's, concatenated before this source
            try:
                value = fn(*args, **kwargs)
            except Exception as exc:
                results.append({"raised": type(exc).__name__})
                continue
            try:
                results.append({"value": encode(value)})  # noqa: F821
            except Unplain as exc:  # noqa: F821
                results.append({"unplain": str(exc)})
    write_all(out_fd, to_json({"results": results}).encode())  # noqa: F821


def site_builtins():
    """The builtins `python -I` has and `-S` leaves out (exit, quit, help, copyright, credits, license)."""
    site.setquit()
    site.setcopyright()
    site.sethelper()


def main():
    cfg = dict(arg.split("=", 1) for arg in sys.argv[1:])
    if cfg.get("serve") == "1":
        serve()
    site_builtins()
    start(cfg)


def start(cfg):
    """One run, from this outer process: its payload on stdin, its cfg (limits, ids, fds) as strings."""
    payload = marshal.loads(read_all(0))  # the evaluator's own data: source, nonce and calls as plain data
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sig_fd, out_fd = int(cfg["sig_fd"]), int(cfg["out_fd"])
    wait_for_cgroups(cfg)
    dirfds = {}
    if cfg["uid"] != "-" and cfg["newroot"] == "-":
        for path in sys.path:
            if os.path.isdir(path):
                dirfds[path] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    flags = int(cfg["unshare"])
    if flags and LIBC.unshare(flags) != 0:
        fatal("unshare: " + os.strerror(ctypes.get_errno()))
    r_alive, w_alive = os.pipe()
    child = os.fork()
    if child:
        os.close(sig_fd)
        os.close(out_fd)
        os.close(r_alive)
        relay(os.waitpid(child, 0)[1])
    os.close(w_alive)
    try:
        if cfg["newroot"] != "-":
            private_root(cfg)
            os.chdir("/tmp")
        else:
            os.chdir(cfg["cwd"])
        if cfg["uid"] != "-":
            os.setgroups([])
            os.setgid(int(cfg["gid"]))
            os.setuid(int(cfg["uid"]))
            if dirfds:
                reroute_unreadable(dirfds)
        LIBC.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.set_blocking(r_alive, False)
        try:
            if os.read(r_alive, 1) == b"":
                os._exit(137)
        except BlockingIOError:
            pass
        os.close(r_alive)
        me = os.getpid()
        child = os.fork()
    except SystemExit:
        raise
    except Exception as exc:
        fatal(repr(exc))
    if child:
        os.close(sig_fd)
        os.close(out_fd)
        relay(os.waitpid(child, 0)[1])
    try:
        LIBC.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if os.getppid() != me:
            os._exit(137)
        set_limits(cfg)
        if cfg["seccomp"] != "-":
            seccomp_filter(cfg["seccomp"])
    except Exception as exc:
        fatal(repr(exc))
    module = types.ModuleType("__sandbox__")
    sys.modules["__sandbox__"] = module
    exec(compile(payload["source"], "program.py", "exec"), module.__dict__)
    if payload.get("calls") is not None:
        run_calls(module, payload, out_fd)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os.write(sig_fd, payload["nonce"].encode())
    os._exit(0)


main()
