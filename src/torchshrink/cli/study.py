"""The ``study`` command: the main job."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torchshrink.cli.args import add_data_dir, add_device
from torchshrink.cli.outputs import STUDY, add_force, check_output

__all__ = ["add_study_command"]


def add_study_command(sub: Any) -> None:
    p = sub.add_parser("study", help="train, prune, quantize, combine and report, in one resumable run",
                       description="Run the whole study. Finished stages are cached under OUT/cache and reused "
                                   "when the command is run again (after an interruption or a settings change).")  # fmt: skip
    p.add_argument("--config", metavar="FILE.yaml", help="settings to override (see docs/study.yaml for every key)")
    p.add_argument("--quick", action="store_true", help="small data, single epochs, every stage (a few minutes)")
    p.add_argument("--out", metavar="DIR", help="output folder, one study at a time (default: runs/study, or "
                   "runs/study-quick)")  # fmt: skip
    add_device(p)
    add_force(p)
    add_data_dir(p)
    p.set_defaults(func=_cmd_study)


def _cmd_study(args: argparse.Namespace) -> int:
    from torchshrink import distributed as dist
    from torchshrink.errors import ConfigError
    from torchshrink.study import load_config, quick_config, run_study
    from torchshrink.study.report import summary_rows

    if dist.world_size() > 1:  # its stage cache is one process's: concurrent ranks would race on it
        raise ConfigError("study runs in one process: start it without torchrun (train, prune, quantize and "
                          "compress run under torchrun)")  # fmt: skip
    cfg = load_config(args.config)  # validated before any work starts
    if args.quick:
        cfg = quick_config(cfg)
    out = check_output(Path(args.out or ("runs/study-quick" if args.quick else "runs/study")), STUDY, force=args.force)
    results = run_study(cfg, out, args.data_dir, args.device)
    print()
    print(f"{'technique':<20} {'student %':>9} {'ours %':>7}  ours is")
    for technique, their_acc, _, our_acc, our_ratio, what in summary_rows(results):
        print(f"{technique:<20} {their_acc:>9} {our_acc:>7}  {our_ratio}, {what}")
    meta = results["meta"]
    print(f"\n{len(meta['computed_stages'])} stages computed, {len(meta['cached_stages'])} reused from the cache, "
          f"{meta['wall_seconds_this_run']:.0f}s; report: {out / 'report.md'}")  # fmt: skip
    return 0
