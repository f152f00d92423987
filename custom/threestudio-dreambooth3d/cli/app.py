"""``dreambooth3d app``: the pipeline as a web page (Gradio), one queued ``dreambooth3d run`` per job."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..errors import MachineError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> argparse.ArgumentParser:
    from ..pipeline.presets import PRESETS

    p = sub.add_parser(
        "app",
        help="a web page: upload photos, type a prompt, watch the run, turn the mesh around, download it",
        description="Serves a page (Gradio; pip install 'threestudio-dreambooth3d[app]') where each job is one "
        "resumable `dreambooth3d run` in its own folder under --out-root, named by a hash of its photos, class "
        "noun, prompt, preset and method: the same inputs resume instead of recomputing. One job runs at a time "
        "per GPU (one on a CPU-only machine), the others wait in a queue. Stop ends the job's whole process "
        "group and the job can be resumed later; after a restart the page lists every job under --out-root, "
        "finished ones browsable, unfinished ones resumable with one click. Only files under --out-root are "
        "served.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves every "
                   "network the machine is on, without a login)")
    p.add_argument("--port", type=int, default=7860, metavar="PORT", help="port (default 7860)")
    p.add_argument("--out-root", default="outputs/app", metavar="DIR", help="folder of the jobs, one subfolder each "
                   "(default outputs/app)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="the preset the page starts with (default: default; smoke: a CPU check in minutes)")
    return p


def host_warning(host: str) -> str:
    """'' for a local address; otherwise a warning that the page is open to the network."""
    if host in LOCAL_HOSTS:
        return ""
    everyone = host in ("0.0.0.0", "::")
    return (f"dreambooth3d app: warning: --host {host} serves the page to "
            + ("every network this machine is on" if everyone else f"whoever reaches {host}")
            + ", without a login; anyone who opens it can start runs on this machine.")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    out_root = Path(args.out_root).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    # uploads land under the out-root too, so nothing outside it is served; no analytics calls
    os.environ["GRADIO_TEMP_DIR"] = str(out_root / ".uploads")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise MachineError("the app needs Gradio: pip install 'threestudio-dreambooth3d[app]'") from None
    from ..app.jobs import JobManager
    from ..app.ui import build

    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    manager = JobManager(out_root)
    # SIGTERM (a service manager, kill) ends like Ctrl-C: running jobs are stopped cleanly, resumable
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        page = build(manager, default_preset=args.preset)
        page.queue(default_concurrency_limit=8)
        print(f"dreambooth3d app: jobs in {out_root}; {len(manager.jobs)} found", flush=True)
        page.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(out_root)], show_error=False,
                    ssr_mode=False, footer_links=[], quiet=False)
    except KeyboardInterrupt:
        pass
    finally:
        manager.close()
    return 0
