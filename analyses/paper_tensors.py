"""Copy the paper's own saved Q/K/V into ``data/paper-tensors/``, checked byte for byte.

The official code (github.com/MingyuJ666/Rope_with_LLM) ships the layer-10 query, key and value
states it saved after RoPE for Llama-2-7B-chat and Llama-3-8B-Instruct
(``saved_attn_scores/meta-llama/<model>/{q,k,v}_merged_attn_weights_layer10.pt``). massmech does
not redistribute them (the repository states no licence): this script copies them from a clone
you made, checks each file's sha256 against the one massmech's ledger was computed on (commit
443a763), and puts them where the ledger's ``saved`` run reads them
(:data:`massmech.report.runs.PAPER_TENSORS_DIR`). A file already there with the right bytes is
kept; one with other bytes is refused, never overwritten.

Usage: python analyses/paper_tensors.py --from CLONE [--commit 443a763]
(CLONE: a working tree, or a bare repository / git directory, read at ``--commit``.)
Last line: JSON, the files written and kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from massmech.report.runs import PAPER_TENSORS, paper_tensor_files

COMMIT = "443a763571099a65e73e351b7398287c534b1b81"
SHA256 = {  # (model folder, site) -> sha256 of the file at COMMIT
    ("Llama-2-7b-chat-hf", "q"): "b87d6170781890337744577e141e817cad8f59d158157253591c50cfbbc45357",
    ("Llama-2-7b-chat-hf", "k"): "e77a74e7a2f7eb24c0380070dbf429761664661adf82ae0882dbfe5076494155",
    ("Llama-2-7b-chat-hf", "v"): "6fe479fa32c1a7576970e5a325abbabdef0e82f673b34fb0d0ec8926e4e62184",
    ("Meta-Llama-3-8B-Instruct", "q"): "9036d736ee204ca4b17f3aba64ff79f155005d39904349647914d007783344d9",
    ("Meta-Llama-3-8B-Instruct", "k"): "83a7cd3e0d59a1beb50c6f0678a36e447c3db0a46dc31bf6fdb25120d2bc7068",
    ("Meta-Llama-3-8B-Instruct", "v"): "08b45e3e8bf1da755d4e8e5f15956276c003dfe172f70faded2ba82f94609a1c",
}


def read(clone: Path, rel: str, commit: str) -> bytes:
    """A file of the clone: from its working tree if there is one, else from git at ``commit``."""
    if (clone / rel).is_file():
        return (clone / rel).read_bytes()
    out = subprocess.run(["git", "--git-dir", str(clone / ".git" if (clone / ".git").exists() else clone), "show",
                          f"{commit}:{rel}"], capture_output=True)
    if out.returncode:
        sys.exit(f"{clone}: no {rel} in its working tree, nor at commit {commit} ({out.stderr.decode().strip()}); "
                 "pass --from a clone of github.com/MingyuJ666/Rope_with_LLM")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="clone", required=True, type=Path, help="a clone of MingyuJ666/Rope_with_LLM")
    ap.add_argument("--commit", default=COMMIT, help="the commit to read from a bare clone")
    args = ap.parse_args()
    if not args.clone.is_dir():
        sys.exit(f"--from {args.clone}: no such folder; clone github.com/MingyuJ666/Rope_with_LLM first")
    blobs = {}
    for model, spec in PAPER_TENSORS.items():  # everything read and checked before anything is written
        for site, dest in paper_tensor_files(model).items():
            rel = f"saved_attn_scores/meta-llama/{spec['folder']}/{Path(dest).name}"
            data = read(args.clone, rel, args.commit)
            digest, want = hashlib.sha256(data).hexdigest(), SHA256[(spec["folder"], site)]
            if digest != want:
                sys.exit(f"{args.clone / rel}: sha256 {digest[:16]}..., not the {want[:16]}... of commit {COMMIT[:7]}: "
                         "the ledger's numbers were computed on that commit's files")
            if Path(dest).is_file() and hashlib.sha256(Path(dest).read_bytes()).hexdigest() != want:
                sys.exit(f"{dest} exists with other bytes: not overwritten; move it away first")
            blobs[dest] = data
    written, kept = [], []
    for dest, data in blobs.items():
        if Path(dest).is_file():
            kept.append(dest)
            continue
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(dest).with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(dest)
        written.append(dest)
    print(f"{len(written)} written, {len(kept)} already there, in {Path(next(iter(blobs))).parents[1]}")
    print(json.dumps({"written": written, "kept": kept}))


if __name__ == "__main__":
    main()
