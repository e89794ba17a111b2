"""run_command: deadlines, streaming, process-group kills, Ctrl-C, with real child processes."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from ryla_modal.deploy.proc import STDERR, STDOUT, CommandResult, redact, run_command
from tests._pids import pid_alive, wait_dead


def py(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", textwrap.dedent(code)]


# A grandchild that ignores SIGTERM, inherits stdout and sleeps "forever"; its pid is printed.
SPAWN_GRANDCHILD = textwrap.dedent("""
    import subprocess, sys
    gc = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print("grandchild", gc.pid, flush=True)
""")


def grandchild_pid(result: CommandResult) -> int:
    (line,) = [x for x in result.stdout_lines if x.startswith("grandchild ")]
    return int(line.split()[1])


def test_lines_exit_code_and_streams_are_kept_apart() -> None:
    seen: list[tuple[str, str]] = []
    result = run_command(
        py("""
            import sys
            print("one"); print("two")
            print("oops", file=sys.stderr)
            sys.stdout.write("no newline at end")
            sys.exit(3)
        """),
        timeout=20,
        on_line=lambda s, line: seen.append((s, line)),
    )
    assert result.exit_code == 3
    assert not result.timed_out and not result.interrupted and not result.ok
    assert result.stdout_lines == ["one", "two", "no newline at end"]
    assert result.stderr_lines == ["oops"]
    assert result.stderr_tail == "oops"
    assert sorted(seen) == sorted(result.lines)
    assert result.argv[0] == sys.executable


def test_lines_reach_the_callback_while_the_child_still_runs(tmp_path: Path) -> None:
    # The child only exits after the callback has seen its first line, so a runner that
    # buffered output until exit would hang here until the deadline instead.
    flag = tmp_path / "seen"
    got: list[str] = []

    def on_line(stream: str, line: str) -> None:
        got.append(line)
        if line == "waiting":
            flag.write_text("x")

    result = run_command(
        py(f"""
            import os, time
            print("waiting")
            while not os.path.exists({str(flag)!r}):
                time.sleep(0.01)
            print("done")
        """),
        timeout=20,
        on_line=on_line,
    )
    assert result.ok, result
    assert got == ["waiting", "done"]


def test_deadline_stops_the_child_and_keeps_what_arrived() -> None:
    result = run_command(
        py("""
            import time
            print("before", flush=True)
            time.sleep(600)
        """),
        timeout=1.0,
    )
    assert result.timed_out
    assert result.stdout_lines == ["before"]
    assert result.exit_code == -signal.SIGTERM
    assert not pid_alive(result.pid)


def test_child_ignoring_sigterm_is_killed_after_the_grace() -> None:
    result = run_command(
        py("""
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("stubborn", flush=True)
            time.sleep(600)
        """),
        timeout=1.0,
        kill_grace=0.2,
    )
    assert result.timed_out
    assert result.exit_code == -signal.SIGKILL
    assert result.stdout_lines == ["stubborn"]


def test_grandchild_holding_stdout_open_does_not_block_the_deadline() -> None:
    result = run_command(py(SPAWN_GRANDCHILD + "\nimport time\ntime.sleep(600)\n"), timeout=1.5)
    assert result.timed_out
    assert wait_dead([result.pid, grandchild_pid(result)]) == []


def test_child_that_exits_but_leaves_a_grandchild_on_the_pipe_returns() -> None:
    # The command finished; only its grandchild keeps stdout open.  We must neither wait for
    # the deadline nor leave the grandchild running.
    result = run_command(py(SPAWN_GRANDCHILD + "\nprint('bye')\n"), timeout=30, kill_grace=0.2)
    assert not result.timed_out
    assert result.exit_code == 0
    assert result.duration_s < 30  # returned long before the deadline
    assert "bye" in result.stdout_lines
    assert wait_dead([grandchild_pid(result)]) == []


def test_ctrl_c_is_forwarded_to_the_group() -> None:
    def on_line(stream: str, line: str) -> None:
        if line == "ready":
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C now

    result = run_command(
        py("""
            import sys, time
            try:  # "ready" inside the try: a SIGINT right after it must land in the handler
                print("ready", flush=True)
                time.sleep(600)
            except KeyboardInterrupt:
                print("child got SIGINT", flush=True)
                sys.exit(7)
        """),
        timeout=30,
        on_line=on_line,
    )
    assert result.interrupted and not result.timed_out
    assert result.exit_code == 7
    assert "child got SIGINT" in result.stdout_lines


def test_ctrl_c_kills_a_child_that_ignores_sigint() -> None:
    def on_line(stream: str, line: str) -> None:
        if line == "ready":
            os.kill(os.getpid(), signal.SIGINT)

    result = run_command(
        py("""
            import signal, time
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print("ready", flush=True)
            time.sleep(600)
        """),
        timeout=30,
        kill_grace=0.2,
        on_line=on_line,
    )
    assert result.interrupted
    assert result.exit_code == -signal.SIGKILL


def test_callback_error_kills_the_group_and_propagates() -> None:
    pids: list[int] = []

    def on_line(stream: str, line: str) -> None:
        raise BrokenPipeError("stdout went away")

    with pytest.raises(BrokenPipeError):
        run_command(
            py("import time\nprint('x', flush=True)\ntime.sleep(600)"),
            timeout=30,
            on_line=on_line,
            on_start=pids.append,
        )
    assert wait_dead(pids) == []


def test_secrets_travel_in_env_not_argv() -> None:
    env = dict(os.environ, RYLA_TEST_SECRET="s3cr3t-value")
    result = run_command(
        py("import os; print(len(os.environ['RYLA_TEST_SECRET']))"), timeout=20, env=env
    )
    assert result.stdout_lines == ["12"]
    assert all("s3cr3t" not in a for a in result.argv)


def test_keep_lines_keeps_the_newest_and_says_so() -> None:
    seen: list[str] = []
    result = run_command(
        py("for i in range(50): print(i)"),
        timeout=20,
        keep_lines=10,
        on_line=lambda s, line: seen.append(line),
    )
    assert result.stdout_lines == [str(i) for i in range(40, 50)]
    assert result.truncated
    assert len(seen) == 50


def test_bad_utf8_and_crlf_are_tolerated() -> None:
    result = run_command(
        py(r"import sys; sys.stdout.buffer.write(b'caf\xe9\r\nok\r\n')"), timeout=20
    )
    assert result.stdout_lines == ["caf\N{REPLACEMENT CHARACTER}", "ok"]


def test_missing_program_and_bad_arguments() -> None:
    with pytest.raises(FileNotFoundError):
        run_command(["/nonexistent/ryla-no-such-program"], timeout=5)
    with pytest.raises(ValueError, match="argv"):
        run_command([], timeout=5)
    with pytest.raises(ValueError, match="timeout"):
        run_command([sys.executable, "-c", "pass"], timeout=0)


def test_stderr_and_stdout_both_drain_when_large() -> None:
    # 2 MB on each stream: a runner that read one pipe at a time would deadlock on the other.
    result = run_command(
        py("""
            import sys
            for i in range(20000):
                sys.stdout.write("o" * 99 + "\\n")
                sys.stderr.write("e" * 99 + "\\n")
        """),
        timeout=30,
    )
    assert result.ok
    assert len(result.stdout_lines) == 20000
    assert len(result.stderr_lines) == 20000
    assert len(result.stderr_tail.splitlines()) == 40


def test_redact_hides_secret_values_and_flag_arguments() -> None:
    argv = ["modal", "--token-secret", "as-abc123", "--api-token=xyz", "run", "x-as-abc123-y"]
    assert redact(argv, secrets=["as-abc123"]) == [
        "modal",
        "--token-secret",
        "***",
        "--api-token=***",
        "run",
        "x-***-y",
    ]


def test_no_stray_pipe_descriptors_after_many_runs() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        run_command(py("print(1)"), timeout=20)
    run_command(py("import time; time.sleep(60)"), timeout=0.3, kill_grace=0.05)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_streams_are_named() -> None:
    result = run_command(py("import sys; print('a'); print('b', file=sys.stderr)"), timeout=20)
    assert set(result.lines) == {(STDOUT, "a"), (STDERR, "b")}
