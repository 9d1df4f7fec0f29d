"""The ``optscale`` command (a console script of the package; every ``python -m`` form still works).

    optscale run [--profile NAME] [--run-id ID] [--only PATTERN] [--overrides "a.b=1,c.d=2"]
                                      the whole workbook: bash run_all.sh with the same flags
    optscale generate pools|score|combine|merge|info|regrade ...
                                      pools: python -m optscale.generate ...
    optscale info [--profile NAME] ...
                                      what the pools hold: python -m optscale.generate info ...
    optscale study ...                the generator / prompt study: python -m optscale.study ...
    optscale report outputs/<run>     a run's results page: python -m optscale.report ...

``optscale VERB --help`` prints each verb's own options (the forwarding verbs pass ``--help`` on
to the module's parser).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Callable, Sequence

from .config import PROJECT_ROOT

__all__ = ["main", "FORWARDED"]


def _generate(argv: list[str]) -> int:
    from .generate import main as generate_main

    return generate_main(argv)


def _info(argv: list[str]) -> int:
    return _generate(["info", *argv])


def _study(argv: list[str]) -> int:
    from .study import main as study_main

    return study_main(argv)


def _report(argv: list[str]) -> int:
    from .report import main as report_main

    return report_main(argv)


# verb -> (the module command it stands for, one line of help, the function given the rest of argv)
FORWARDED: dict[str, tuple[str, str, Callable[[list[str]], int]]] = {
    "generate": ("python -m optscale.generate", "generate, score, combine, merge, regrade or inspect pools", _generate),
    "info": ("python -m optscale.generate info", "what each pool holds (= optscale generate info)", _info),
    "study": ("python -m optscale.study", "the generator / prompt / decoding study", _study),
    "report": ("python -m optscale.report", "write a run's results page, outputs/<run>/index.html", _report),
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="optscale", description=__doc__.replace("``", ""),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = sub.add_parser("run", help="run the whole workbook (bash run_all.sh)",
                         description="Execute every notebook in order with papermill (bash run_all.sh): writes "
                                     "outputs/<run-id>/ with the executed notebooks, figures, tables, logs, "
                                     "manifest.json and the results page index.html.")
    run.add_argument("--profile", help="profile name in profiles/ (default: optscale.config.DEFAULT_PROFILE)")
    run.add_argument("--run-id", help="the output folder's name under outputs/ (default: <profile>-<UTC time>)")
    run.add_argument("--only", help="run only the notebooks whose name contains PATTERN", metavar="PATTERN")
    run.add_argument("--overrides",
                     help='config overrides, e.g. "sampling.n_samples.gsm8k=4,data.max_questions.gsm8k=2"')
    for verb, (module, text, _) in FORWARDED.items():
        # listed here for `optscale --help`; main() hands the rest of argv to the module's own parser
        sub.add_parser(verb, help=f"{text} ({module})", add_help=False)
    return ap


def _run(args: argparse.Namespace) -> int:
    script = PROJECT_ROOT / "run_all.sh"
    if not script.is_file():
        print(f"optscale run: {script} not found; `optscale run` needs the project checkout "
              "(pip install -e . in a clone)", file=sys.stderr)
        return 2
    cmd = ["bash", str(script)]
    for flag in ("profile", "run_id", "only", "overrides"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", value]
    try:
        return subprocess.call(cmd, cwd=PROJECT_ROOT)
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:
        return FORWARDED[argv[0]][2](argv[1:])
    args = _parser().parse_args(argv)
    return _run(args)  # "run" is the only verb argparse handles itself


if __name__ == "__main__":
    sys.exit(main())
