"""Mutation check, run on demand: do the tests fail when the code is wrong?

Each mutation below replaces one line of the source with a plausible bug. The script copies the
repository's files (tracked and untracked, not ignored) into a temporary folder, applies one
mutation at a time there (never in the working tree), runs the tests aimed at it and reports
whether they fail ("killed") or pass ("survived").

    python scripts/mutation_check.py                                 # all mutations, print a table
    python scripts/mutation_check.py --out benchmarks/MUTATIONS.md   # and write it
    python scripts/mutation_check.py --only no_per_epoch_save c_vector_counts_out
    python scripts/mutation_check.py --list

A mutation whose line is no longer in the source is reported as "stale" (update its text). The
unmutated targeted tests run first; if any fails the check stops, since a kill would mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    files: tuple[str, ...]  # the first that exists in the copy is mutated (modules move)
    old: str  # must occur exactly once in that file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files
    bug: str


def m(name, files, old, new, tests, bug):
    return Mutation(name, (files,) if isinstance(files, str) else tuple(files), old, new,
                    (tests,) if isinstance(tests, str) else tuple(tests), bug)


T_SAMPLING = "tests/method/test_sampling.py"
T_CADENCE = "tests/run/test_checkpoint_cadence.py"
T_BUDGET_E2E = "tests/method/test_budget.py::test_search_keeps_every_candidate_inside_a_binding_budget"
T_CTRL_C = f"{T_CADENCE}::test_ctrl_c_mid_epoch_saves_the_start_of_epoch_state"
MUTATIONS = [
    # 1. per-forward sampling
    m("layer_keeps_first_draw", "glora/layer.py", "        return self.sampler.next_plan(self)",
      '        return self.__dict__.setdefault("_first", self.sampler.next_plan(self))', T_SAMPLING,
      "a layer caches its first draw forever"),
    m("one_draw_for_all_layers", "glora/sampler.py",
      "            self._pending = [self._draw_plan(m.rank) for m in self._layers]",
      "            self._pending = [self._draw_plan(self._layers[0].rank)] * len(self._layers)", T_SAMPLING,
      "all layers of a forward share one draw"),
    m("sampler_never_draws_none", "glora/sampler.py",
      "            options = self._options[rank] = tuple(support_options(s, rank) for s in SUPPORTS)",
      "            options = self._options[rank] = tuple(support_options(s, rank)[:-1] for s in SUPPORTS)",
      T_SAMPLING, "the sampler never draws 'none'"),
    m("sampler_ignores_seed", "glora/sampler.py", "        self.rng = random.Random(seed)",
      "        self.rng = random.Random(0)", T_SAMPLING, "the sampler ignores its seed"),
    m("eval_subnets_unseeded", "glora/run/trainer.py", "        rng = random.Random(s.seed + 1)",
      "        rng = random.Random()",
      f"{T_SAMPLING}::test_supernet_training_draws_per_step_and_validates_on_fixed_subnets",
      "validation subnets are not seeded"),
    # 2, 6. candidate scoring and reported numbers
    m("bare_backbone_scorer", "glora/run/searcher.py", "evaluate(candidate.load(subnet), search_loader",
      "evaluate(candidate.plain, search_loader", "tests/run/test_scoring.py",
      "every candidate is scored as the bare backbone"),
    m("scores_on_test_split", "glora/run/evolution.py",
      'search_loader, test_loader = loaders[splits["search"]], loaders[splits["test"]]',
      'search_loader, test_loader = loaders[splits["test"]], loaders[splits["test"]]', "tests/run/test_scoring.py",
      "candidates are scored on the test split under protocol val"),
    m("candidate_bias_not_merged", "glora/merge.py", "                target.bias.copy_(bias)",
      "                pass", "tests/run/test_scoring.py", "the search's merged candidate keeps the old bias"),
    m("test_acc_on_search_split", "glora/run/evolution.py",
      "tested = export_and_test(s, job.task, model, test_loader, device, out)",
      "tested = export_and_test(s, job.task, model, search_loader, device, out)",
      "tests/run/test_scoring.py::test_reported_numbers_belong_to_the_best_candidate",
      "the reported test accuracy is measured on the search split"),
    # 3, 4. the budget
    m("ignores_param_limits", "glora/run/searcher.py", "max_params=s.max_params,",
      "max_params=round(1.0 * 1e6),", T_BUDGET_E2E,
      "--param-limits is ignored"),
    m("ignores_min_param_limits", "glora/run/searcher.py", "min_params=s.min_params, seed=s.seed,",
      "min_params=0, seed=s.seed,", T_BUDGET_E2E,
      "--min-param-limits is ignored"),
    m("c_vector_counts_out", "glora/space.py", 'return in_features if support == "C" else out_features',
      "return out_features", "tests/method/test_budget.py", "C = vector counted as out_features"),
    m("c_lora_counts_in_plus_out", "glora/space.py",
      'return k * (in_features + 1) if support == "C" else k * (in_features + out_features)',
      "return k * (in_features + out_features)", "tests/method/test_budget.py", "C = LoRA_k counted as k(in+out)"),
    # 5. checkpoints
    m("no_per_epoch_save", "glora/run/trainer.py", 'if "split" in record or run.epoch % s.save_every == 0:',
      'if "split" in record:', T_CADENCE, "the per-epoch save is removed"),
    m("interrupt_saves_current_state", "glora/run/trainer.py",
      "            atomic_torch_save(snapshot, run.ckpt_path)",
      "            atomic_torch_save(run.payload(), run.ckpt_path)",
      T_CTRL_C,
      "Ctrl-C saves the mid-epoch state"),
    m("interrupt_saves_nothing", "glora/run/trainer.py",
      "            atomic_torch_save(snapshot, run.ckpt_path)",
      "            pass", T_CTRL_C,
      "Ctrl-C saves nothing"),
    m("no_log_trim", "glora/run/supernet.py", "        trim_log(run.log_path, run.epoch)", "        pass",
      f"{T_CADENCE}::test_resume_after_a_crash_trims_the_log_past_the_checkpoint",
      "the log is not trimmed on resume"),
    m("sigterm_not_handled", "glora/run/config.py",
      "for sig in (signal.SIGTERM, signal.SIGINT)}",
      "for sig in (signal.SIGINT,)}",
      f"{T_CADENCE}::test_real_sigterm_mid_epoch_saves_the_start_of_epoch_state", "SIGTERM kills without saving"),
    m("resume_forgets_sampler", "glora/run/trainer.py", '            self.sampler.load_state_dict(ckpt["sampler"])',
      "            pass", T_CTRL_C,
      "resume restarts the sampler"),
    # 9. protocols, refusals, export
    m("paper_searches_val200", "vtab/dataset.py", '"paper": {"train": "train800val200", "search": "test"',
      '"paper": {"train": "train800val200", "search": "val200"',
      "tests/run/test_scoring.py::test_paper_protocol_end_to_end", "protocol paper scores on val200"),
    m("paper_trains_train800", "vtab/dataset.py", '"paper": {"train": "train800val200", "search": "test"',
      '"paper": {"train": "train800", "search": "test"',
      "tests/run/test_scoring.py::test_paper_protocol_end_to_end", "protocol paper trains on train800"),
    m("model_kwargs_unchecked", "glora/run/checkpoint.py",
      'COMPAT_KEYS = ("model", "model_kwargs", "rank", "targets"',
      'COMPAT_KEYS = ("model", "rank", "targets"', "tests/reliability/test_refusals.py",
      "model kwargs of a checkpoint are not compared"),
    m("model_unchecked", "glora/run/checkpoint.py",
      'COMPAT_KEYS = ("model", "model_kwargs", "rank", "targets"',
      'COMPAT_KEYS = ("model_kwargs", "rank", "targets"', "tests/reliability/test_refusals.py",
      "the model name of a checkpoint is not compared"),
    m("mode_unchecked", "glora/run/checkpoint.py",
      '"protocol", "dataset", "mode", "init")',
      '"protocol", "dataset", "unchecked_mode", "init")',
      "tests/reliability/test_refusals.py", "the mode of a checkpoint is not compared"),
    m("subnet_rank_unchecked", "glora/run/checkpoint.py", "    if file_rank > rank:", "    if False:",
      "tests/reliability/test_refusals.py", "a subnet file of a higher rank is accepted"),
    m("export_crops", "glora/export/timm_folder.py", '"crop_pct": 1.0}', '"crop_pct": 0.875}', "tests/export/test_timm_folder.py",
      "config.json asks for timm's default centre crop"),
    m("export_mean_std_swapped", "glora/export/timm_folder.py", '"mean": tuple(mean), "std": tuple(std)',
      '"mean": tuple(std), "std": tuple(mean)', "tests/export/test_timm_folder.py", "config.json records the wrong normalisation"),
    m("probe_scores_train", ("vtab/mini_probe.py", "vtab/mini/probe.py"), "row[name] = linear_probe(train, test)",
      "row[name] = linear_probe(train, train)", "tests/vtab/test_mini_vtab.py::test_probe_reports_both_backbones",
      "the probe scores on its training split"),
    # core math and search, for reference
    m("d_ignores_b0", "glora/layer.py", "            inc = self.bias * d", "            inc = d",
      "tests/method/test_layer.py", "D adds instead of scaling b0 (the forward)"),
    m("merge_d_ignores_b0", "glora/layer.py", "bias = bias + b0 * d", "bias = bias + d",
      "tests/method/test_inject_merge.py", "D adds instead of scaling b0 (the merged weights)"),
    m("merge_skips_finite_check", "glora/layer.py",
      "if tensor is not None and not torch.isfinite(tensor).all():", "if False:",
      "tests/method/test_inject_merge.py", "merging writes non-finite weights"),
    m("merge_drops_gained_bias", "glora/layer.py",
      "linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None,",
      "linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,",
      "tests/export/test_timm_folder.py", "a bias created by C or E is lost where the layer had none"),
    m("top_k_not_all_time", "glora/search.py",
      'self.top_k = sorted(self.top_k + self.candidates, key=self._rank)[:cfg["select_num"]]',
      'self.top_k = sorted(self.candidates, key=self._rank)[:cfg["select_num"]]', "tests/method/test_search.py",
      "the top-k forgets earlier generations"),
]


def copy_repo(dest: Path) -> None:
    """Tracked and untracked (not ignored) files of the working tree, as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_tests(root: Path, tests: tuple[str, ...], timeout: int) -> tuple[str, str, float]:
    """(outcome, first failing test or note, seconds); outcome: pass / fail / timeout / error."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result in {timeout}s", time.time() - start
    seconds = time.time() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
    if proc.returncode == 0:
        return "pass", "", seconds
    if proc.returncode in (1, 2) and failed:
        return "fail", failed[0], seconds
    return "error", f"pytest exit {proc.returncode}: {proc.stdout.strip().splitlines()[-1:]}", seconds


def apply(root: Path, mutation: Mutation) -> tuple[Path, str] | str:
    """Write the mutated file; return (path, original text), or the reason it cannot be applied."""
    path = next((root / f for f in mutation.files if (root / f).is_file()), None)
    if path is None:
        return f"none of {', '.join(mutation.files)} exists"
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        return f"the line occurs {count} times in {path.relative_to(root)}"
    path.write_text(text.replace(mutation.old, mutation.new))
    return path, text


def check(mutations: list[Mutation], timeout: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        root = Path(tmp)
        copy_repo(root)
        targets = tuple(dict.fromkeys(t for mu in mutations for t in mu.tests))
        outcome, note, seconds = run_tests(root, targets, timeout * 4)
        print(f"unmutated targeted tests: {outcome} ({seconds:.0f}s) {note}", flush=True)
        if outcome != "pass":
            raise SystemExit("error: the targeted tests fail without any mutation; fix that first")
        rows = []
        for mu in mutations:
            applied = apply(root, mu)
            if isinstance(applied, str):
                row = dict(mutation=mu, result="stale", by=applied, seconds=0.0)
            else:
                path, original = applied
                try:
                    outcome, note, seconds = run_tests(root, mu.tests, timeout)
                finally:
                    path.write_text(original)
                result = {"fail": "killed", "pass": "SURVIVED", "timeout": "killed (timeout)"}.get(outcome, "error")
                row = dict(mutation=mu, result=result, by=note, seconds=seconds)
            rows.append(row)
            print(f"{row['result']:>9}  {mu.name}  {row['by']}  ({row['seconds']:.0f}s)", flush=True)
        return rows


def revision() -> str:
    """The commit the working tree is at, marked when it has uncommitted changes."""
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def markdown(rows: list[dict], command: str, seconds: float) -> str:
    killed = sum(r["result"].startswith("killed") for r in rows)
    survived = [r["mutation"].name for r in rows if r["result"] == "SURVIVED"]
    other = [r["mutation"].name for r in rows if r["result"] in ("stale", "error")]
    lines = ["# Mutation check", "",
             "One-line bugs put into a copy of the code; each must make the tests aimed at it fail.",
             "The script and the list of mutations: `scripts/mutation_check.py`.", "",
             f"Command: `{command}` at commit {revision()} ({datetime.date.today().isoformat()}, "
             f"{seconds / 60:.1f} min on a 2-core CPU shared with other work).", "",
             f"Result: {killed} of {len(rows)} killed"
             + (f"; survived: {', '.join(survived)}" if survived else "; none survived")
             + (f"; not run: {', '.join(other)}" if other else "") + ".", "",
             "| mutation | file | the bug | result | first failing test |", "|---|---|---|---|---|"]
    for r in rows:
        mu = r["mutation"]
        lines.append(f"| `{mu.name}` | {' or '.join(mu.files)} | {mu.bug} | {r['result']} | "
                     f"{r['by'].replace('|', '/') or '—'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per mutation's test run")
    args = parser.parse_args(argv)
    chosen = MUTATIONS
    if args.only:
        unknown = set(args.only) - {mu.name for mu in MUTATIONS}
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
        chosen = [mu for mu in MUTATIONS if mu.name in args.only]
    if args.list:
        for mu in chosen:
            print(f"{mu.name:32s} {mu.files[0]:22s} {mu.bug}  -> {' '.join(mu.tests)}")
        return 0
    start = time.time()
    rows = check(chosen, args.timeout)
    command = "python scripts/mutation_check.py" + (f" --out {args.out}" if args.out else "") \
        + (f" --only {' '.join(args.only)}" if args.only else "")
    table = markdown(rows, command, time.time() - start)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 1 if any(r["result"] in ("SURVIVED", "error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
