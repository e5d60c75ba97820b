"""``make demo``: build a small Emo8 workspace from the bundled sample images, offline.

Half of the samples are ingested from a folder; the other half are served by a loopback HTTP server and ingested
from a URL list, so the polite downloader runs for real (plus one dead link, to show how failures are recorded).
Every later stage of the pipeline joins here as it lands.
"""

from __future__ import annotations

import csv
import functools
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from typer.testing import CliRunner

from emo8.cli import app

SAMPLES = Path(__file__).parent / "samples"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on a free loopback port; yield the base URL (no trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def sample_manifest() -> list[dict[str, str]]:
    """Return the rows of the bundled samples' manifest (file, domain, category, license, attribution...)."""
    with open(SAMPLES / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def run(root: Path) -> int:
    """Build the demo workspace under ``root`` (recreated from scratch); return the process exit code."""
    if root.exists():
        shutil.rmtree(root)
    incoming = root / "incoming"
    folder = incoming / "folder"
    folder.mkdir(parents=True)
    rows = sample_manifest()
    local, remote = rows[::2], rows[1::2]
    for row in local:
        shutil.copy(SAMPLES / row["file"], folder / Path(row["file"]).name)
    workspace = str(root / "workspace")
    runner = CliRunner()

    def emo8(*args: str) -> None:
        print(f"\n$ emo8 {' '.join(args)}", flush=True)
        result = runner.invoke(app, list(args), catch_exceptions=False)
        print(result.output, end="", flush=True)
        if result.exit_code != 0:
            raise SystemExit(result.exit_code)

    emo8("init", workspace)
    emo8("ingest", "folder", str(folder), "-w", workspace, "--domain", "mixed", "--quiet")
    with serve_directory(SAMPLES) as base_url:
        url_list = incoming / "urls.csv"
        with open(url_list, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["url", "caption", "license", "author", "domain"])
            for row in remote:
                writer.writerow(
                    [f"{base_url}/{row['file']}", row["category"], row["license"], "", row["domain"]]
                )
            writer.writerow([f"{base_url}/images/missing.jpg", "a dead link", "", "", ""])
        emo8("ingest", "urls", str(url_list), "-w", workspace, "--allow-private-networks", "--quiet")
    emo8("status", "-w", workspace)
    print(f"\ndemo workspace: {workspace}")
    return 0


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-workspace")
    raise SystemExit(run(root))


if __name__ == "__main__":
    main()
