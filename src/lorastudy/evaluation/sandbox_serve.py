# The sandbox's zygote: the part of the trusted bootstrap that serves many runs from one interpreter. Put before
# lorastudy/evaluation/sandbox_child.py (and after plain.py) into one bootstrap, compiled once by the evaluator;
# never imported. `python -I -S` with the argument serve=1 runs `serve`: a run then costs a fork, not an
# interpreter's start-up (about 20 of a run's 30 ms). What `spawn` forks goes on exactly as a fresh bootstrap does
# (`start`, in sandbox_child.py): the same namespaces, private root, uid, cgroups, rlimits and seccomp filter.
import _signal  # not signal, which imports enum: every run would pay for it
import atexit
import marshal
import os
import sys


def read_message(fd):
    """One length-prefixed marshal message from the evaluator, None at the end of the stream."""
    head = b""
    while len(head) < 4:
        chunk = os.read(fd, 4 - len(head))
        if not chunk:
            return None
        head += chunk
    size, body = int.from_bytes(head, "big"), b""
    while len(body) < size:
        chunk = os.read(fd, size - len(body))
        if not chunk:
            return None
        body += chunk
    return marshal.loads(body)


def write_message(fd, value):
    body = marshal.dumps(value)
    write_all(fd, len(body).to_bytes(4, "big") + body)


def serve():
    """The zygote: for each ("run", cfg, files) from the evaluator (stdin), fork an outer process, put it into
    the run's cgroups, let it go on, and answer its pid; for each ("reap", pid), wait for that outer process and
    answer its wait status. It never reads a run's payload; it ends when the evaluator closes its stdin."""
    site_builtins()  # noqa: F821 - sandbox_child.py's, concatenated after this source
    write_message(1, ("ready", os.getpid()))
    while True:
        message = read_message(0)
        if message is None:
            os._exit(0)
        if message[0] == "reap":  # kill the group, then reap: while unreaped, the pid cannot be reused
            try:
                os.killpg(message[1], 9)
            except OSError:
                pass
            write_message(1, ("status", os.waitpid(message[1], 0)[1]))
            continue
        try:
            write_message(1, ("pid", spawn(message[1], message[2])))
        except OSError as exc:
            write_message(1, ("error", repr(exc)))


def spawn(cfg, files):
    """Fork the outer process of one run: its own process group, the run's files as its standard streams and
    result fds, the run's environment; it waits until it is in the run's cgroups (written here, as root)."""
    r_go, w_go = os.pipe()
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            LIBC.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # noqa: F821 - the zygote gone, the run goes (init follows)
            if os.getppid() != zygote:
                os._exit(137)
            os.close(w_go)
            os.setpgid(0, 0)
            for fd, name, mode in ((1, "output", os.O_WRONLY), (0, "payload", os.O_RDONLY)):
                opened = os.open(files[name], mode | os.O_NOFOLLOW)
                os.dup2(opened, fd)  # over the control pipes: the outer process cannot talk to the zygote
                os.close(opened)
                if fd == 1:
                    os.dup2(1, 2)  # from here a set-up error is in the run's output
            os.chdir(files["root"])
            cfg["out_fd"] = str(os.open(files["values"], os.O_WRONLY | os.O_NOFOLLOW))
            cfg["sig_fd"] = str(os.open(files["signal"], os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
            cfg["go_fd"] = str(r_go)
            os.environ.clear()
            os.environ.update(files["env"])
        except BaseException as exc:
            fatal(repr(exc))  # noqa: F821
        try:
            start(cfg)  # noqa: F821
        except BaseException as exc:  # noqa: B036 - what the interpreter does with an uncaught exception at exit
            exit_as_interpreter(exc)
    os.close(r_go)
    try:
        os.setpgid(pid, pid)  # here too, so the group exists before the evaluator could kill it
    except OSError:
        pass
    try:
        for procs in files["cgroups"]:
            with open(procs, "w") as fh:
                fh.write(str(pid))
        os.write(w_go, b"1")
    except OSError as exc:  # a closed pipe without "1": the outer process exits with a set-up error, running nothing
        try:
            os.write(2, ("zygote: could not join %s: %r\n" % (files["cgroups"], exc)).encode())
        except OSError:
            pass
    os.close(w_go)
    return pid


def exit_as_interpreter(exc):
    """End a forked process as a fresh interpreter ends on an exception left uncaught: the traceback (or
    SystemExit's text) on stderr, then the wait for non-daemon threads and the atexit handlers, then status 1
    (SIGINT after KeyboardInterrupt) or SystemExit's code (1 when it is not a number)."""
    code = 1
    try:
        if isinstance(exc, SystemExit):
            code = 0 if exc.code is None else exc.code
            if not isinstance(code, int):
                sys.stderr.write(str(code) + "\n")
                code = 1
        else:
            sys.excepthook(type(exc), exc, exc.__traceback__)
    except BaseException:
        pass
    for finish in (lambda: sys.modules["threading"]._shutdown() if "threading" in sys.modules else None,
                   atexit._run_exitfuncs, sys.stdout.flush, sys.stderr.flush):
        try:
            finish()
        except BaseException:
            pass
    if isinstance(exc, KeyboardInterrupt):  # the interpreter then ends by SIGINT, as a shell expects
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGINT)
    os._exit(code & 0xFF)
