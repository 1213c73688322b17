"""Large-message benchmark: 5, 30 and 100 MB sends through drafts and upload sessions (issue 6).

    .venv/bin/python bench/large.py [--sizes 5,30,100] [--crlf]

For each size: a fresh spool holding one message (text + HTML, an inline
image, a file with a non-ASCII name and PDF-like attachments making up the
rest; LF line endings as Unix programs write them unless --crlf), queued
through the real submission writer; the strict HTTPS fake
(``python -m tests.fakegraph --roles Mail.Send,Mail.ReadWrite``); then
``mssendmail-worker --once`` with real msal. Reports the worker's wall time
and its peak RSS (ru_maxrss from wait4, taken by a small launcher process so
the benchmark's own memory is not counted). Every attachment must arrive
byte-identical (sha256, from the fake's large.jsonl).

Goal: peak RSS < 2.5 x message size + 60 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mssendmail.spool.layout import Spool, init_tree  # noqa: E402
from mssendmail.submission.writer import Submission, make_envelope  # noqa: E402
from tests.fakegraph import spawn  # noqa: E402
from tests.fakegraph_large import FilePart, make_message, run_measured  # noqa: E402

BIN = Path(sys.executable).parent
MB = 1_000_000
MIB = 1 << 20


def files_for(size_mb: int) -> list[FilePart]:
    """Attachments whose base64 MIME comes to about size_mb MB."""
    rnd = os.urandom
    files = [
        FilePart("logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + rnd(150_000), cid="logo@bench"),
        FilePart("Übersicht 2026 (日本).xlsx", "application/vnd.ms-excel", rnd(300_000)),
    ]
    rest = int(size_mb * MB * 0.75) - 450_000 - 20_000
    big = [rest] if size_mb < 50 else [rest * 6 // 10, rest - rest * 6 // 10]
    for i, n in enumerate(big):
        files.append(FilePart(f"report-{i}.pdf", "application/pdf", b"%PDF-1.7\n" + rnd(n - 9)))
    return files


def start_fake(work: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    return spawn(work, "--roles", "Mail.Send,Mail.ReadWrite")


def run(size_mb: int, crlf: bool) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="mss-large-"))
    try:
        files = files_for(size_mb)
        message = make_message(files, subject=f"bench {size_mb} MB")
        if not crlf:
            message = message.replace(b"\r\n", b"\n")
        size = len(message)
        init_tree(str(work / "queue"))
        with Submission(Spool(str(work / "queue")), 200 * MB) as sub:
            sub.write(message)
            sub.commit(make_envelope("", ["alice@example.org", "hidden@example.org"]))
        del message
        fake, info = start_fake(work)
        try:
            cfg = work / "bench.env"
            cfg.write_text(
                f"TENANT_ID={info['tenant']}\nCLIENT_ID={info['client_id']}\n"
                f"CLIENT_SECRET={info['secret']}\nAUTHORITY_HOST={info['url']}\n"
                f"GRAPH_URL={info['url']}\nQUEUE_DIR={work / 'queue'}\n"
                "SENDER=relay@contoso.example\nMAX_MESSAGE_SIZE=150MiB\n"
            )
            env = {**os.environ, "REQUESTS_CA_BUNDLE": info["ca"], "CURL_CA_BUNDLE": info["ca"]}
            env["MSSENDMAIL_CONFIG"] = str(cfg)
            start = time.monotonic()
            code, peak, stderr = run_measured(
                [str(BIN / "mssendmail-worker"), "--once"], env, str(work / "rss.json")
            )
            elapsed = time.monotonic() - start
            assert code == 0, f"worker exited {code}: {stderr}"
        finally:
            fake.terminate()
            fake.wait()
        lines = (work / "fake-out" / "large.jsonl").read_text().splitlines()
        assert len(lines) == 1, f"fake sent {len(lines)} large messages"
        got = {a["name"]: a["sha256"] for a in json.loads(lines[0])["attachments"]}
        for f in files:
            # Small parts may stay inside the draft; every uploaded one must match.
            if f.name in got:
                assert got[f.name] == f.sha256, f"{f.name} changed in transit"
        assert all(f.name in got for f in files if len(f.data) >= 3 * MB), "a big file is missing"
        limit = 2.5 * size + 60 * MIB
        return {
            "size_mb": round(size / MB, 1),
            "line_endings": "CRLF" if crlf else "LF",
            "seconds": round(elapsed, 2),
            "mb_per_s": round(size / MB / elapsed, 1),
            "peak_rss_mib": round(peak / MIB, 1),
            "limit_mib": round(limit / MIB, 1),
            "ok": peak < limit,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="5,30,100")
    parser.add_argument("--crlf", action="store_true", help="CRLF input instead of LF")
    args = parser.parse_args()
    ok = True
    for size in (int(s) for s in args.sizes.split(",")):
        result = run(size, args.crlf)
        print(json.dumps(result), flush=True)
        ok = ok and bool(result["ok"])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
