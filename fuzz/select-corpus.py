#!/usr/bin/env python3
"""Refreshes the committed corpus of a fuzz target from what fuzzing found, keeping it small.

    python3 fuzz/select-corpus.py TARGET [--max N] [DIR ...]

DIR defaults to fuzz/target/corpus-work/TARGET (where scripts/fuzz.sh puts new inputs).
`cargo fuzz cmin` keeps every input that adds a coverage feature, which for the YAML and
JSON targets is hundreds of files; this keeps the hand-made seeds (corpus/TARGET/seed-*)
and adds, greedily, the found inputs that cover the most code the corpus does not cover
yet (libFuzzer's per-input features without hit counts), at most N (default 75) of them.
Files are named by their SHA-1, as libFuzzer names them. Previously kept non-seed files
compete again with the new ones.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

FUZZ = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--max", type=int, default=75, help="most found inputs to keep")
    ap.add_argument("dirs", nargs="*")
    args = ap.parse_args()
    corpus = os.path.join(FUZZ, "corpus", args.target)
    dirs = [os.path.abspath(d) for d in args.dirs] or [os.path.join(FUZZ, "target", "corpus-work", args.target)]

    with tempfile.TemporaryDirectory() as tmp:
        control, out = os.path.join(tmp, "control"), os.path.join(tmp, "out")
        os.mkdir(out)
        subprocess.run(
            ["cargo", "fuzz", "run", "--debug-assertions", args.target, out, corpus, *dirs, "--",
             "-set_cover_merge=1", "-use_counters=0", f"-merge_control_file={control}", "-rss_limit_mb=2048"],
            cwd=FUZZ, env={**os.environ, "RUSTC_BOOTSTRAP": "1"}, check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        lines = open(control).read().split("\n")
        files = lines[2 : 2 + int(lines[0])]
        features = {}
        for line in lines[2 + len(files) :]:
            if line.startswith("FT "):
                _, idx, *fs = line.split()
                features[files[int(idx)]] = set(map(int, fs))
        data = {f: open(f, "rb").read() for f in features}

    is_seed = lambda f: os.path.dirname(f) == corpus and os.path.basename(f).startswith("seed-")
    covered = set().union(*(fs for f, fs in features.items() if is_seed(f)))
    total = set().union(*features.values())
    seed_cov = len(covered)
    candidates, chosen = {f: fs for f, fs in features.items() if not is_seed(f)}, {}
    while candidates and len(chosen) < args.max:
        best = max(candidates, key=lambda f: (len(candidates[f] - covered), -len(data[f])))
        if not candidates[best] - covered:
            break
        covered |= candidates.pop(best)
        chosen[hashlib.sha1(data[best]).hexdigest()] = data[best]

    for name in os.listdir(corpus):
        if not name.startswith("seed-"):
            os.remove(os.path.join(corpus, name))
    for name, content in chosen.items():
        with open(os.path.join(corpus, name), "wb") as fh:
            fh.write(content)
    pct = lambda n: 100 * n // max(len(total), 1)
    print(f"{args.target}: seeds cover {pct(seed_cov)}%, with {len(chosen)} found inputs {pct(len(covered))}% "
          f"of {len(total)} features", file=sys.stderr)


if __name__ == "__main__":
    main()
