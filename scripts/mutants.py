"""Does the chaos run catch the defects we fixed? Each patch in tests/mutants/ puts one back;
the chaos run, with the same seeds, must fail an invariant on it that holds on the code as is.

    .venv/bin/python scripts/mutants.py                     # every patch, seeds 5 7 4
    .venv/bin/python scripts/mutants.py 01 07 --seeds 5 7   # the patches named 01-*, 07-*

HEAD is copied into a directory of its own for the baseline and for each patch (git archive),
each patch is applied to its copy (an error, before anything runs, if one no longer applies),
and scripts/chaos.py runs in each copy with this Python, one run at a time: for each seed the
baseline first, then every mutant, so that the machine's load falls on them alike. Then a
table: which invariants FAILed, per mutant and seed, beside the baseline's. A mutant is caught
by a seed when an invariant fails on it that held on the baseline with that seed.

Loopback only (chaos.py's own Redis and servers); each run is bounded by chaos.py's own
schedule and, should it hang, interrupted after twice that. Runs, logs and each history.json
stay in --out.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATCHES = ROOT / "tests" / "mutants"
BASELINE = "baseline"
# The CI mode's options (tests/test_chaos.py): seeds that meet every kind of fault between them.
SEEDS = (5, 7, 4)
FAULTS = "sigterm,kill9,redis-stall,redis-restart"
VERDICT = re.compile(r"^(PASS|FAIL)  (.+?)  \(")


@dataclass
class Variant:
    name: str  # BASELINE, or the patch's file name without .patch
    patch: Path | None
    about: str  # the patch's first line: which defect it puts back
    tree: Path | None = None  # its copy of HEAD


@dataclass
class Run:
    variant: str
    seed: int
    seconds: float
    exit_code: int | None  # None: interrupted (it overran its bound)
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    output: Path | None = None

    @property
    def checked(self) -> bool:
        """Whether the checker ran (every invariant got a verdict line)."""
        return bool(self.passed or self.failed)


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def variants(names: list[str]) -> list[Variant]:
    """The baseline, then the patches whose names start with one of `names` (all if none)."""
    patches = sorted(PATCHES.glob("*.patch"))
    if names:
        patches = [p for p in patches if any(p.name.startswith(n) for n in names)]
        missing = [n for n in names if not any(p.name.startswith(n) for p in patches)]
        if missing:
            sys.exit(f"mutants: no patch in {PATCHES} starts with {', '.join(missing)}")
    found = [Variant(BASELINE, None, f"HEAD {git('rev-parse', '--short', 'HEAD')}, as it is")]
    for patch in patches:
        about = patch.read_text().splitlines()[0] if patch.stat().st_size else "?"
        found.append(Variant(patch.stem, patch, about))
    return found


def prepare(variant: Variant, under: Path) -> None:
    """A copy of HEAD with the variant's patch applied; exits if the patch does not apply."""
    tree = under / "src" / variant.name
    tree.mkdir(parents=True)
    archive = under / "src" / f"{variant.name}.tar"
    git("archive", "--format=tar", f"--output={archive}", "HEAD")
    subprocess.run(["tar", "-xf", str(archive), "-C", str(tree)], check=True)
    archive.unlink()
    if variant.patch is not None:
        applied = subprocess.run(
            ["git", "apply", "--verbose", str(variant.patch)],
            cwd=tree,
            capture_output=True,
            text=True,
        )
        if applied.returncode != 0:
            sys.exit(
                f"mutants: {variant.patch.name} no longer applies to HEAD; make it again "
                f"(see tests/mutants/README.md):\n{applied.stderr}"
            )
    # The copy's own server must be the one that runs (this Python may have the project
    # installed in editable mode from elsewhere): chaos.py starts `python -m server` there.
    where = subprocess.run(
        [sys.executable, "-c", "import server; print(server.__file__)"],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"mutants: in {tree}, `import server` finds {where}, not the copy")
    variant.tree = tree


def chaos(variant: Variant, seed: int, options: argparse.Namespace, out: Path) -> Run:
    """One chaos run in the variant's copy; its output is kept beside its workdir."""
    assert variant.tree is not None
    workdir = out / "runs" / f"{variant.name}-seed{seed}"
    workdir.mkdir(parents=True)
    command = [
        sys.executable,
        "scripts/chaos.py",
        f"--seed={seed}",
        f"--clients={options.clients}",
        f"--instances={options.instances}",
        f"--seconds={options.seconds:g}",
        f"--settle={options.settle:g}",
        f"--faults={options.faults}",
        f"--workdir={workdir}",
    ]
    # chaos.py waits at most `seconds` for the faults, as long again plus 20 s for the clients,
    # and settles twice; start-up and shutdown of the servers come on top.
    bound = 2 * options.seconds + 2 * options.settle + 120
    output = workdir / "output.txt"
    started = time.monotonic()
    with output.open("w") as sink:
        process = subprocess.Popen(
            command, cwd=variant.tree, stdout=sink, stderr=subprocess.STDOUT, text=True
        )
        try:
            code: int | None = process.wait(bound)
        except subprocess.TimeoutExpired:
            # SIGINT: chaos.py stops its servers and its Redis on the way out.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            code = None
    run = Run(variant.name, seed, time.monotonic() - started, code, output=output)
    for line in output.read_text(errors="replace").splitlines():
        if match := VERDICT.match(line):
            (run.passed if match.group(1) == "PASS" else run.failed).append(match.group(2))
    return run


def caught(run: Run, baseline: Run | None) -> list[str]:
    """The invariants that failed on the mutant and held on the baseline with the same seed."""
    held = set(baseline.passed) if baseline is not None else set()
    return [name for name in run.failed if name in held]


def outcome(run: Run) -> str:
    if run.exit_code is None:
        return "interrupted: overran its bound"
    if not run.checked:
        return f"no verdicts (exit code {run.exit_code}): see {run.output}"
    if not run.failed:
        return f"all {len(run.passed)} hold"
    return "FAIL " + "; ".join(run.failed)


def report(chosen: list[Variant], runs: list[Run]) -> None:
    baseline = {r.seed: r for r in runs if r.variant == BASELINE}
    width = max(len(v.name) for v in chosen)
    print()
    print(f"{'mutant':<{width}}  {'seed':>4}  {'time':>5}  invariants")
    for variant in chosen:
        for run in (r for r in runs if r.variant == variant.name):
            line = f"{run.variant:<{width}}  {run.seed:>4}  {run.seconds:>4.0f}s  {outcome(run)}"
            if variant.name != BASELINE and run.failed:
                also = [n for n in run.failed if n not in caught(run, baseline.get(run.seed))]
                if also:
                    line += f"  (also failed on the baseline: {'; '.join(also)})"
            print(line)
    print()
    for variant in chosen[1:]:
        mine = [r for r in runs if r.variant == variant.name]
        by = [r.seed for r in mine if caught(r, baseline.get(r.seed))]
        verdict = f"caught by {len(by)} of {len(mine)} seeds" + (f" ({_seeds(by)})" if by else "")
        print(f"{variant.name:<{width}}  {verdict}  -- {variant.about}")
    broken = [r for r in baseline.values() if r.failed or not r.checked]
    if broken:
        print(
            f"\nThe baseline itself did not pass with seed(s) {_seeds([r.seed for r in broken])}: "
            "a mutant's failure of the same invariant with that seed is not counted as caught."
        )


def _seeds(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="patches whose names start so (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--settle", type=float, default=7.0)
    parser.add_argument("--faults", default=FAULTS)
    parser.add_argument("--out", type=Path, default=None, help="default: a new temporary dir")
    parser.add_argument("--list", action="store_true", help="list the patches and stop")
    options = parser.parse_args(argv)
    chosen = variants(options.names)
    if options.list:
        for variant in chosen[1:]:
            print(f"{variant.name}: {variant.about}")
        return 0
    out = options.out or Path(tempfile.mkdtemp(prefix="mutants-"))
    out.mkdir(parents=True, exist_ok=True)
    for variant in chosen:
        prepare(variant, out)
    dirty = git("status", "--porcelain", "--untracked-files=no")
    total = len(chosen) * len(options.seeds)
    print(
        f"mutants: {len(chosen) - 1} patches and the baseline ({chosen[0].about}) x seeds "
        f"{_seeds(options.seeds)}: {total} chaos runs of {options.seconds:g} s, one at a time"
    )
    if dirty:
        print("mutants: the working tree has changes that are not in HEAD; they are not tested")
    print(
        f"mutants: chaos.py --clients={options.clients} --instances={options.instances} "
        f"--seconds={options.seconds:g} --settle={options.settle:g} --faults={options.faults}"
    )
    print(f"mutants: runs, logs and histories in {out}")
    runs: list[Run] = []
    started = time.monotonic()
    for seed in options.seeds:
        for variant in chosen:
            run = chaos(variant, seed, options, out)
            runs.append(run)
            print(
                f"mutants: {len(runs)}/{total} {variant.name} seed {seed}: {outcome(run)} "
                f"({run.seconds:.0f} s)",
                flush=True,
            )
    report(chosen, runs)
    print(f"\nmutants: {total} runs in {(time.monotonic() - started) / 60:.1f} min")
    baseline_ok = all(r.checked and not r.failed for r in runs if r.variant == BASELINE)
    all_caught = all(
        any(caught(r, _baseline(runs, r.seed)) for r in runs if r.variant == v.name)
        for v in chosen[1:]
    )
    return 0 if baseline_ok and all_caught else 1


def _baseline(runs: list[Run], seed: int) -> Run | None:
    return next((r for r in runs if r.variant == BASELINE and r.seed == seed), None)


if __name__ == "__main__":
    sys.exit(main())
