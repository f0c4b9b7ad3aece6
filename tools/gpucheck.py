"""One command that turns a lent GPU into every figure, inside a time budget.

    python tools/gpucheck.py --budget 450 --out gpucheck-out     # on the GPU machine
    python tools/gpucheck.py --dry-run                           # anywhere: parts, variants, times

Runs the parts of nets.gpucheck.parts, most valuable first, each in its own process under its
own timeout (its cap, or what is left of the budget), and rewrites DIR/report.json and
DIR/report.md after every part, so a run killed at any point keeps what it measured. A part's
rows also stream to DIR/parts/NAME.jsonl and its output to DIR/parts/NAME.log. Runs from a
plain checkout (no install needed).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tools/NAME.py`: import from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import click

from nets.gpucheck.parts import PART_NAMES, PARTS, run_part
from nets.gpucheck.report import PARTS_DIR, read_rows, write_report
from nets.gpucheck.variants import COMPILE_SECONDS, part_variants
from nets.gpucheck.workloads import PLANS
from tools.options import CommaList

REPORT_RESERVE_S = 5  # kept back at the end for the last report
LOG_TAIL_CHARS = 3000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_child(name: str, out: Path, plan: str, timeout: float, archs) -> tuple[str, float]:
    """Run one part in a new process group; on timeout the whole group is killed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(out), "--plan", plan,
               "--budget", str(int(timeout))] + (["--arch", ",".join(map(str, archs))] if archs else [])
    start = time.perf_counter()
    with (out / PARTS_DIR / f"{name}.log").open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        status = "timed out"
        try:
            code = process.wait(timeout=timeout)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            pass
        finally:  # also when this command is stopped: no part outlives it
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return status, round(time.perf_counter() - start, 1)


def _log_tail(out: Path, name: str) -> str:
    path = out / PARTS_DIR / f"{name}.log"
    return path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:] if path.exists() else ""


def _report(out: Path, run: dict, outcomes: dict) -> dict:
    parts = []
    for part in PARTS:
        outcome = outcomes.get(part.name, {"status": "not run", "seconds": 0, "timeout_s": 0})
        parts.append({"name": part.name, "title": part.title, **outcome, "rows": read_rows(out, part.name),
                      "log_tail": _log_tail(out, part.name) if outcome["status"] not in ("ok", "not run") else ""})
    device_rows = parts[0]["rows"]
    device = device_rows[0]["value"] if device_rows else "device not recorded"
    return {"device": device, "run": run, "parts": parts}


def _dry_run(plan: str, selected: tuple, budget: float | None) -> None:
    variants = part_variants(PLANS[plan])
    total = 0
    for part in PARTS:
        if part.name not in selected:
            continue
        listed = variants.get(part.name, [])
        total += part.estimate_s
        click.echo(f"{part.name:<12} ~{part.estimate_s:>4} s (cap {part.cap_s} s)  {part.title}; "
                   f"{len(listed)} kernel variants")
        for variant in listed:
            click.echo(f"    {variant.name}  warps={variant.num_warps} stages={variant.num_stages}")
    click.echo(f"estimated total ~{total} s on the {plan} plan (expectations: each variant compiles in about "
               f"{COMPILE_SECONDS} s of one core, in parallel in the compile part)"
               + (f"; budget {budget:.0f} s" if budget else ""))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--budget", type=click.FloatRange(min=1), default=None,
              help="Seconds the whole check may take (required unless --dry-run).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for report.json, report.md and each part's rows and log (required unless --dry-run).")
@click.option("--dry-run", is_flag=True,
              help="List the parts, the kernel variants each compiles and the estimated time.")
@click.option("--parts", "selected", type=CommaList(PART_NAMES), default=",".join(PART_NAMES), show_default=True,
              help="Comma-separated parts to run, in the fixed order.")
@click.option("--plan", type=click.Choice(sorted(PLANS)), default="gpu", show_default=True,
              help="gpu: ConstNet-16-10 at batch 128, 4096^3 GEMMs; tiny: the same code at CPU size (tests).")
@click.option("--arch", "archs", type=CommaList(("80", "90")), default=None,
              help="Compute capabilities the compile part compiles for [default: the GPU's, from NVML].")
@click.option("--part", default=None, hidden=True, help="Internal: run this one part in this process.")
def main(budget, out, dry_run, selected, plan, archs, part):
    """Run the GPU check within --budget seconds and write DIR/report.json and DIR/report.md."""
    if dry_run:
        _dry_run(plan, selected, budget)
        return
    if budget is None or out is None:
        raise click.UsageError("--budget and --out are required (or give --dry-run)")
    archs = tuple(int(arch) for arch in archs) if archs else None
    if part is not None:
        run_part(part, out, PLANS[plan], budget, archs)
        return
    try:
        (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"--out {out}: cannot create the directory ({error.strerror})") from None
    for name in selected:
        (out / PARTS_DIR / f"{name}.jsonl").unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # run the cleanup above
    start = time.perf_counter()
    run = {"command": " ".join(sys.argv), "plan": plan, "budget_s": budget, "started": _now()}
    outcomes: dict = {}
    write_report(out, _report(out, run, outcomes))
    for item in PARTS:
        if item.name not in selected:
            continue
        left = budget - (time.perf_counter() - start) - REPORT_RESERVE_S
        timeout = min(item.cap_s, left) if PLANS[plan].capped else left
        if timeout < item.minimum_s:
            outcomes[item.name] = {"status": f"skipped ({max(left, 0):.0f} s left, needs {item.minimum_s} s)",
                                   "seconds": 0, "timeout_s": 0}
            continue
        click.echo(f"{item.name}: {item.title} (up to {timeout:.0f} s)", err=True)
        status, seconds = _run_child(item.name, out, plan, timeout, archs)
        outcomes[item.name] = {"status": status, "seconds": seconds, "timeout_s": round(timeout)}
        click.echo(f"{item.name}: {status} in {seconds} s", err=True)
        run.update(finished=_now(), elapsed_s=round(time.perf_counter() - start, 1))
        write_report(out, _report(out, run, outcomes))
    write_report(out, _report(out, run, outcomes))
    click.echo(f"wrote {out / 'report.md'} and {out / 'report.json'}", err=True)


if __name__ == "__main__":
    main()
