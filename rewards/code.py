"""Code-executing rewards: the completion runs in the sandbox (`rewards.sandbox`), never in the job's process.

Both have TRL's signature and return a `ScoredList` (a list of floats with `.metrics`), which the runner logs as
`reward/<name>/<key>`: per call, the fraction of samples that `passed`, `failed` (ran but was wrong, raised, or did
not parse), hit a `timeout`, `crashed` (died of a signal) or were `killed` for another limit (memory, output,
file size), plus `executions` (sandbox runs in the call) and `exec_s` (their mean wall time). Every outcome other
than a pass scores 0.0 (a defined failure value), and the job goes on; a sandbox that cannot run at all
(`SandboxUnavailable`, `SandboxError`) raises, naming the reward.

Judging happens on the host where it can: `python_expression` parses the printed repr of the value as a literal
and compares it with the answer here, and stdin/stdout tests compare the output here, so a completion cannot pass
by returning an object whose `__eq__` always says yes, by printing the answer's text, or by exiting early (the
value is only read after a random per-execution token). Assert tests must run next to the code, in its process:
each test's result is written with such a token to a copy of stdout taken before the code runs, so printing fake
results or exiting early does not pass, but an object with a lying `__eq__` does pass an `assert f(x) == y`. Code
that digs a token out of the harness's frames could forge a result (true of any in-process harness; the program
file itself is unreadable to the sandboxed uid when the job runs as root). Prefer stdin/stdout tests where reward
hacking matters.
"""
from __future__ import annotations

import ast
import json
import math
import re
import secrets
from typing import Sequence

from rewards.builtin import EOS_TEXTS, REWARDS, strip_eos, texts
from rewards.sandbox import ExecResult, Limits, SandboxError, SandboxUnavailable, Status, shared_sandbox

OUTCOMES = ("passed", "failed", "timeout", "crashed", "killed")
_STATUS_OUTCOME = {Status.OK: "passed", Status.ERROR: "failed", Status.TIMEOUT: "timeout",
                   Status.CRASHED: "crashed", Status.KILLED: "killed"}
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


class ScoredList(list):
    """A reward's values (a plain list, as TRL expects) carrying `metrics` for the runner to log (from a batch call
    that returned; when the runner re-calls sample by sample after an exception, they are not logged)."""

    def __init__(self, values, metrics: dict[str, float]):
        super().__init__(values)
        self.metrics = metrics


def extract_code(completion: str) -> str:
    """The first fenced code block (```python ... ```, or an unterminated one running to the end), else the whole
    completion (without trailing EOS texts)."""
    m = _FENCE.search(completion)
    return m.group(1) if m else strip_eos(completion)


def _limits(timeout_s: float, memory_mb: int, cpu_s: int | None = None) -> Limits:
    return Limits(wall_s=float(timeout_s), cpu_s=int(cpu_s or max(1, math.ceil(timeout_s))), memory_mb=int(memory_mb))


def _sandbox(name: str, isolation: str | None, workers: int | None):
    try:
        return shared_sandbox(isolation, workers)
    except (SandboxUnavailable, ValueError) as e:
        raise type(e)(f"reward '{name}': {e}") from None


def _map(name: str, sandbox, programs: list[str], stdins: list[str], lim: Limits) -> list[ExecResult]:
    try:
        return sandbox.map(programs, stdins, lim)
    except SandboxError as e:
        raise SandboxError(f"reward '{name}': the sandbox failed (not the completion): {e}") from None


def _metrics(outcomes: list[str | None], results: list[ExecResult]) -> dict[str, float]:
    """Fractions of the scored samples (None: not applicable, left out) by outcome, and execution counts."""
    scored = [o for o in outcomes if o is not None]
    n = max(1, len(scored))
    m = {f"sandbox/{o}_frac": sum(x == o for x in scored) / n for o in OUTCOMES}
    m["sandbox/executions"] = float(len(results))
    m["sandbox/exec_s"] = sum(r.wall_s for r in results) / len(results) if results else 0.0
    return m


# --- python_expression --------------------------------------------------------------------------------------------
_EXPR_PROGRAM = """import os, sys
_value = eval(compile({expr!r}, "<completion>", "eval"), {{"__builtins__": __builtins__}})
os.write(1, ({token!r} + repr(_value)).encode())
"""


def count_operators(tree: ast.AST) -> int:
    """Binary, unary, boolean and comparison operators in an expression's AST."""
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.BinOp, ast.UnaryOp)):
            n += 1
        elif isinstance(node, ast.BoolOp):
            n += len(node.values) - 1
        elif isinstance(node, ast.Compare):
            n += len(node.ops)
    return n


def _parse_answer(answer):
    if isinstance(answer, str):
        try:
            return ast.literal_eval(answer.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return answer.strip()
    return answer


def values_equal(value, answer, tol: float = 1e-9) -> bool:
    """Numbers (not bools) within `tol` relative; anything else by ==."""
    def num(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    if num(value) and num(answer):
        return math.isfinite(value) and abs(value - answer) <= tol * max(1.0, abs(answer))
    return type(value) is type(answer) and value == answer


def uses_only(tree: ast.AST, numbers) -> bool:
    """Every int literal of the expression is one of `numbers`, each used at most as often as it is listed (the
    Countdown rule). `numbers`: a list of ints or a string of them ("37,45" or JSON)."""
    if isinstance(numbers, str):
        numbers = json.loads(numbers) if numbers.strip().startswith("[") else re.findall(r"-?\d+", numbers)
    left = [int(x) for x in numbers]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, complex)) \
                and not isinstance(node.value, bool):
            if node.value not in left:
                return False
            left.remove(node.value)
    return True


@REWARDS.register("python_expression")
def python_expression(prompts: list[str], completions: list[str], answer: list, numbers: list | None = None,
                      min_operators: int = 0, timeout_s: float = 2.0, memory_mb: int = 256,
                      isolation: str | None = None, workers: int | None = None, eos_texts: Sequence[str] = EOS_TEXTS,
                      **columns) -> ScoredList:
    """1.0 when the completion (stripped, trailing EOS texts removed) is a Python expression whose value, computed in
    the sandbox, equals `answer` (parsed as a Python literal; numbers compare within 1e-9 relative); else 0.0.
    Judged here without running (0.0): a syntax error; fewer than `min_operators` operators (the bare literal `82`
    with min_operators=1); with a `numbers` column, a number literal that is not one of the sample's numbers (each
    usable once, so `82` or `37+45+0` fails for numbers [37, 45])."""
    sandbox = _sandbox("python_expression", isolation, workers)
    lim = _limits(timeout_s, memory_mb)
    values: list[float] = [0.0] * len(completions)
    outcomes: list[str | None] = ["failed"] * len(completions)
    todo, programs, tokens = [], [], []
    for i, c in enumerate(texts(completions)):
        expr = strip_eos(c, eos_texts)
        try:
            tree = ast.parse(expr, mode="eval")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
        if count_operators(tree) < min_operators or (numbers is not None and not uses_only(tree, numbers[i])):
            continue
        token = secrets.token_hex(8)
        todo.append(i)
        tokens.append(token)
        programs.append(_EXPR_PROGRAM.format(expr=expr, token=token))
    results = _map("python_expression", sandbox, programs, [""] * len(programs), lim)
    for i, token, r in zip(todo, tokens, results):
        outcomes[i] = _STATUS_OUTCOME[r.status] if r.status is not Status.OK else "failed"  # until the value is right
        if r.status is not Status.OK or not r.stdout.startswith(token):
            continue
        try:
            value = ast.literal_eval(r.stdout[len(token):])
        except (ValueError, SyntaxError, MemoryError, RecursionError):  # a repr that is no literal: never equal
            outcomes[i] = "failed"
            continue
        ok = values_equal(value, _parse_answer(answer[i]))
        values[i] = 1.0 if ok else 0.0
        outcomes[i] = "passed" if ok else "failed"
    return ScoredList(values, _metrics(outcomes, results))


# --- code_tests -----------------------------------------------------------------------------------------------
_ASSERT_HARNESS = """import os, sys
def _orchard_harness():
    token, tests, code = {token!r}, {tests!r}, {code!r}
    out = os.dup(1)
    os.set_inheritable(out, False)
    g = {{"__name__": "__main__", "__builtins__": __builtins__}}
    exec(compile(code, "<completion>", "exec"), g)  # if it raises, no test passes (MemoryError: killed)
    for i, t in enumerate(tests):
        try:
            exec(compile(t, "<test %d>" % i, "exec"), g)
            ok = True
        except BaseException:
            ok = False
        os.write(out, ("%s %d %s\\n" % (token, i, "pass" if ok else "fail")).encode())
_orchard_harness()
"""


def parse_tests(tests) -> tuple[str, list]:
    """('asserts', [statement, ...]) or ('io', [(stdin, expected_stdout), ...]) from a dataset's test value: a list
    of statements, a list of {"input", "output"} mappings, a string of assert lines, or JSON of either list.
    Raises ValueError naming what it got otherwise."""
    if isinstance(tests, str):
        s = tests.strip()
        if s.startswith("["):
            tests = json.loads(s)
        else:
            return "asserts", [line for line in s.splitlines() if line.strip()]
    if not isinstance(tests, (list, tuple)):
        raise ValueError(f"tests must be a list or a string, got {type(tests).__name__}")
    if all(isinstance(t, str) for t in tests):
        return "asserts", list(tests)
    if all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        return "io", [(str(t["input"]), str(t["output"])) for t in tests]
    raise ValueError("tests must be assert statements (strings) or {'input': ..., 'output': ...} pairs, not a mix")


def _normalise_output(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


@REWARDS.register("code_tests")
def code_tests(prompts: list[str], completions: list[str], tests: list, all_or_nothing: bool = False,
               timeout_s: float = 5.0, memory_mb: int = 512, isolation: str | None = None, workers: int | None = None,
               **columns) -> ScoredList:
    """The completion's code (its first fenced block, else the whole completion) run in the sandbox against the
    sample's `tests` column: assert statements (all run after the code in one execution; each passes if it does
    not raise) or stdin/stdout pairs (one execution per pair; passes when the output matches, trailing whitespace
    ignored). Reward: the fraction of tests passed, or 1.0/0.0 with `all_or_nothing`. None (not applicable) for a
    sample with no tests. A malformed `tests` value raises ValueError naming the sample."""
    sandbox = _sandbox("code_tests", isolation, workers)
    lim = _limits(timeout_s, memory_mb)
    jobs: list[tuple[int, str, list]] = []  # (sample, kind, cases)
    programs, stdins, owners, tokens = [], [], [], []
    for i, (c, t) in enumerate(zip(texts(completions), tests)):
        try:
            kind, cases = parse_tests(t)
        except (ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"reward 'code_tests': sample {i}: {e} (tests={str(t)[:80]!r})") from None
        jobs.append((i, kind, cases))
        if not cases:
            continue
        code = extract_code(c)
        if kind == "asserts":
            token = secrets.token_hex(8)
            programs.append(_ASSERT_HARNESS.format(token=token, tests=cases, code=code))
            stdins.append("")
            owners.append(i)
            tokens.append(token)
        else:
            for stdin, _ in cases:
                programs.append(code)
                stdins.append(stdin)
                owners.append(i)
                tokens.append("")
    results = _map("code_tests", sandbox, programs, stdins, lim)
    by_sample: dict[int, list[tuple[ExecResult, str]]] = {}
    for i, r, token in zip(owners, results, tokens):
        by_sample.setdefault(i, []).append((r, token))
    values: list[float | None] = [None] * len(completions)
    outcomes: list[str | None] = [None] * len(completions)
    tests_run = tests_passed = 0
    for i, kind, cases in jobs:
        if not cases:
            continue
        runs = by_sample[i]
        if kind == "asserts":
            r, token = runs[0]
            passed = set()
            for line in r.stdout.splitlines():
                parts = line.split(" ")
                if len(parts) == 3 and parts[0] == token and parts[2] == "pass" and parts[1].isdigit():
                    passed.add(int(parts[1]))
            n_pass = len(passed & set(range(len(cases))))
            worst = r.status
        else:
            n_pass = sum(r.ok and _normalise_output(r.stdout) == _normalise_output(expected)
                         for (r, _), (_, expected) in zip(runs, cases))
            worst = next((r.status for r, _ in runs if r.status is not Status.OK), Status.OK)
        frac = n_pass / len(cases)
        values[i] = (1.0 if n_pass == len(cases) else 0.0) if all_or_nothing else frac
        outcomes[i] = "passed" if n_pass == len(cases) else (
            "failed" if worst in (Status.OK, Status.ERROR) else _STATUS_OUTCOME[worst])
        tests_run += len(cases)
        tests_passed += n_pass
    metrics = _metrics(outcomes, results)
    metrics["tests_passed_frac"] = tests_passed / tests_run if tests_run else 0.0
    return ScoredList(values, metrics)
